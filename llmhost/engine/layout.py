"""How llama.cpp cuts one decode call into micro-batches, computed ahead of the call.

With a KV cache per sequence (``kv_unified`` off, what the runner uses: each slot attends only to its own
cells), ``llama_decode`` splits a batch with ``split_equal(n_ubatch, sequential=True)``: a micro-batch
holds one *run of consecutive sequence ids*, and the same number of tokens from each of them. Every
micro-batch is a full pass over the weights, so the cut decides what a step costs:

- decode tokens of slots 0-7 go in one pass; of slots 0, 4, 8, ... 28 in eight passes (the slowdown after
  busy waves: finished requests leave holes, and the next wave's slots came back scattered);
- a prompt chunk next to decode tokens adds a pass for all but its first token, and prompt chunks of
  unequal length in consecutive slots add one pass per distinct length.

:func:`micro_batches` mirrors that split (``llama_batch_allocr::split_equal`` in llama.cpp's
``src/llama-batch.cpp``) so the scheduler can shape steps that cut well, and the engine can count passes.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["micro_batches"]


def micro_batches(chunks: Iterable[tuple[int, int]], n_ubatch: int) -> list[tuple[tuple[int, ...], int]]:
    """The micro-batches of a step whose chunks are ``(slot, n_tokens)`` pairs (one chunk per slot),
    each as ``(slots, tokens_per_slot)``, in the order llama.cpp runs them."""
    remaining = {slot: n for slot, n in sorted(chunks) if n > 0}
    passes: list[tuple[tuple[int, ...], int]] = []
    while remaining:
        run: list[int] = []
        for slot in remaining:  # ascending: the batch is laid out in slot order
            if not run or slot == run[-1] + 1:
                run.append(slot)
        # As many tokens from each sequence as all of them still have, within n_ubatch.
        take = min(min(remaining[slot] for slot in run), max(n_ubatch // len(run), 1))
        for slot in run:
            remaining[slot] -= take
            if remaining[slot] == 0:
                del remaining[slot]
        passes.append((tuple(run), take))
    return passes
