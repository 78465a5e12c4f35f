"""Continuous batching: which tokens of which sequences go into the next decode step.

Plain Python with no llama_cpp import: ``admit()`` and ``schedule()`` produce data, the runner decodes it,
and ``update_from_output()`` takes the sampled tokens back (vLLM's split). Each step:

1. waiting requests take free slots (FIFO), reusing a cached prefix when a slot has one (whoever put it
   there; ``cached_tokens`` reports only the part the request's own cache scope computed);
2. every sequence that is generating feeds its newest token (one token each), and a speculative one
   (``speculative = "ngram"``) also the draft its own earlier text suggests (:mod:`llmhost.engine.ngram`),
   within a per-step cap on drafted tokens (each needs a logits row);
3. prompts still being prefilled share what is left of the token budget, so a long prompt is split into
   chunks across steps and running streams keep flowing; the prompts of one run of consecutive slots
   take equal chunks, which llama.cpp decodes in one pass over the weights (:mod:`llmhost.engine.layout`).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from llmhost.engine.kv import SlotTable
from llmhost.engine.ngram import DRAFT_START, NgramIndex, PredictionIndex, adapt_draft
from llmhost.engine.types import FinishReason, GenerationRequest, ScheduledChunk, SchedulerOutput
from llmhost.errors import ContextLengthError, EngineOverloadedError, RequestError

__all__ = ["Admission", "Scheduler", "Sequence", "SequenceStatus"]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """A request's life inside the scheduler."""

    request: GenerationRequest
    tokens: list[int]  # prompt + generated tokens
    status: SequenceStatus = SequenceStatus.WAITING
    slot: int = -1
    num_computed: int = 0  # tokens whose KV cells are in the cache
    # Prompt tokens reused from the prefix cache that this request's own cache scope had computed: the
    # figure usage reports. The reuse itself may be longer (it crosses scopes): see ``num_computed``.
    cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    max_total_tokens: int = 0
    ngrams: NgramIndex | None = None  # a speculative sequence's n-gram index, built on first use
    predicted: PredictionIndex | None = None  # drafts from the request's prediction, built on first use
    draft_len: int = DRAFT_START  # how many tokens its next draft may have (see ``ngram.adapt_draft``)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_tokens)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def output_tokens(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.num_prompt_tokens

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.request_id!r}, status={self.status.value}, slot={self.slot}, "
            f"prompt_tokens={self.num_prompt_tokens}, completion_tokens={self.num_completion_tokens})"
        )


# Speculative drafts are made only while fewer sequences than this decode at once. A drafted token costs
# a logits row (~5 ms on two cores for Gemma 3's 262k vocabulary) and adds a pass to the step, while a
# batch of N streams makes N tokens a step: measured with every request speculative on RAG quotes, 4
# concurrent streams ran 1.48-1.67x plain, 8 streams 0.95-1.08x (README, Benchmarks). The output is the
# same either way; only the speed changes.
SPECULATE_BELOW = 8


@dataclass(frozen=True, slots=True)
class Admission:
    """A sequence that took a slot this step: the runner must drop the slot's KV cells from ``keep`` on."""

    request_id: str
    slot: int
    keep: int


@dataclass(slots=True)
class StepResult:
    """What changed for one sequence after a step: the tokens it gained (several when a draft was
    accepted; none when it ended on an end-of-generation token), how many it sampled, and how many
    tokens it had drafted (``n_sampled - 1`` of them were accepted)."""

    sequence: Sequence
    new_tokens: tuple[int, ...]
    finished: bool
    n_sampled: int = 1
    n_drafted: int = 0


@dataclass
class Scheduler:
    """Waiting and running queues over a fixed number of sequence slots."""

    n_slots: int
    n_ctx_slot: int
    max_batch_tokens: int
    max_waiting: int = 64
    prefix_reuse: bool = True
    max_draft_tokens: int = 0  # drafted tokens a step may check (the runner's spare logits rows)
    waiting: collections.deque[Sequence] = field(default_factory=collections.deque)
    running: list[Sequence] = field(default_factory=list)
    _by_id: dict[str, Sequence] = field(default_factory=dict)
    _scheduled: list[ScheduledChunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.slots = SlotTable(self.n_slots, prefix_reuse=self.prefix_reuse)

    # ----- intake -------------------------------------------------------------------------------------
    def check_fits(self, request: GenerationRequest) -> None:
        """Raise if the request can never run in this context window."""
        n_prompt = len(request.prompt_tokens)
        max_tokens = request.params.max_tokens
        if n_prompt == 0:
            raise RequestError("the prompt is empty", param="prompt")
        requested = n_prompt + (max_tokens or 0)
        if n_prompt >= self.n_ctx_slot or requested > self.n_ctx_slot:
            raise ContextLengthError(requested, self.n_ctx_slot, n_prompt, max_tokens)

    def add(self, request: GenerationRequest) -> Sequence:
        """Queue a request; raise if it cannot fit or the wait queue is full."""
        if request.request_id in self._by_id:
            raise RequestError(f"duplicate request id {request.request_id!r}")
        self.check_fits(request)
        queued_beyond_slots = len(self.waiting) + 1 - self.slots.n_free
        if queued_beyond_slots > self.max_waiting:
            raise EngineOverloadedError(
                f"server busy: {self.n_slots} slots in use and {len(self.waiting)} requests waiting"
            )
        limit = self.n_ctx_slot
        if request.params.max_tokens is not None:
            limit = min(limit, len(request.prompt_tokens) + request.params.max_tokens)
        seq = Sequence(request=request, tokens=list(request.prompt_tokens), max_total_tokens=limit)
        self.waiting.append(seq)
        self._by_id[request.request_id] = seq
        return seq

    def get(self, request_id: str) -> Sequence | None:
        return self._by_id.get(request_id)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ----- one step ----------------------------------------------------------------------------------
    def admit(self) -> list[Admission]:
        """Move waiting sequences into free slots, reusing cached prefixes."""
        admitted: list[Admission] = []
        while self.waiting and self.slots.n_free > 0:
            seq = self.waiting.popleft()
            slot, reuse, own = self.slots.acquire(seq.request.prompt_tokens, seq.request.cache_scope)
            seq.slot, seq.num_computed, seq.cached_tokens = slot, reuse, own
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(Admission(seq.request_id, slot, reuse))
        return admitted

    def prefix_lost(self, request_id: str) -> None:
        """The runner could not keep a slot's prefix (e.g. a sliding-window cache): compute from zero."""
        seq = self._by_id[request_id]
        seq.num_computed = seq.cached_tokens = 0
        self.slots.forget(seq.slot)

    def schedule(self) -> SchedulerOutput:
        """Pick the tokens for the next decode step within the token budget."""
        generating = [seq for seq in self.running if not seq.is_prefilling]
        budget = self.max_batch_tokens
        # Drafts take only what the newest tokens of the others leave, and only while few streams decode.
        draft_room = min(self.max_draft_tokens, budget - len(generating))
        if len(generating) >= SPECULATE_BELOW:
            draft_room = 0
        chunks: list[ScheduledChunk] = []
        # Generating sequences first: one token each keeps every stream moving.
        for seq in generating:
            if budget <= 0:
                break
            pos = seq.num_computed
            draft = self._draft(seq, draft_room)
            draft_room -= len(draft)
            tokens = seq.tokens[pos : pos + 1] + draft
            chunks.append(ScheduledChunk(seq.request_id, seq.slot, tokens, pos, True, len(draft)))
            budget -= len(tokens)
        chunks += self._prefill_chunks(budget)
        self._scheduled = chunks
        return SchedulerOutput(chunks)

    def _draft(self, seq: Sequence, room: int) -> list[int]:
        """A speculative sequence's draft: as long as its request allows, the room left this step, and
        the tokens it may still add (the token sampled after the draft is one of them)."""
        params = seq.request.params
        if (params.speculative != "ngram" and not params.prediction) or room <= 0:
            return []
        n = min(seq.draft_len, params.draft_max, room, seq.max_total_tokens - len(seq.tokens) - 1)
        if n <= 0:
            return []
        if params.prediction:
            if seq.predicted is None:
                seq.predicted = PredictionIndex(params.prediction)
            # The newest token (fed this step) is written already: the draft follows it.
            draft = seq.predicted.draft(seq.output_tokens, n)
            if draft:
                return draft
        if seq.ngrams is None:
            seq.ngrams = NgramIndex()
        return seq.ngrams.draft(seq.tokens, n)

    def _prefill_chunks(self, budget: int) -> list[ScheduledChunk]:
        """Prompt chunks for the rest of the budget, shaped for llama.cpp's split: the prefilling
        sequences of one run of consecutive slots take the same number of tokens each (one pass over
        the weights for all of them, where unequal chunks cost a pass per length), runs in the order
        their oldest request arrived."""
        prefilling = sorted((seq for seq in self.running if seq.is_prefilling), key=lambda seq: seq.slot)
        if not prefilling or budget <= 0:
            return []
        runs: list[list[Sequence]] = []
        for seq in prefilling:
            if runs and seq.slot == runs[-1][-1].slot + 1:
                runs[-1].append(seq)
            else:
                runs.append([seq])
        arrival = {id(seq): i for i, seq in enumerate(self.running)}
        runs.sort(key=lambda run: min(arrival[id(seq)] for seq in run))
        chunks: list[ScheduledChunk] = []
        for run in runs:
            if budget <= 0:
                break
            run = run[:budget]
            take = min(min(seq.num_prompt_tokens - seq.num_computed for seq in run), budget // len(run))
            for seq in run:
                pos = seq.num_computed
                end = pos + take
                chunks.append(
                    ScheduledChunk(
                        seq.request_id, seq.slot, seq.tokens[pos:end], pos, end == seq.num_prompt_tokens
                    )
                )
            budget -= take * len(run)
        return chunks

    def update_from_output(
        self, sampled: dict[str, list[int]], is_eog: Callable[[int], bool]
    ) -> list[StepResult]:
        """Account for the step just decoded; append sampled tokens; finish what is done.

        ``sampled`` holds each sequence's tokens in order: one, or with a draft, the drafted tokens the
        runner accepted and then the token it sampled after them (whose own KV cell is not computed yet).
        """
        results: list[StepResult] = []
        for chunk in self._scheduled:
            seq = self._by_id.get(chunk.request_id)
            if seq is None or seq.status is not SequenceStatus.RUNNING:
                continue  # aborted while the step ran
            tokens = sampled.get(chunk.request_id)
            if not tokens:
                seq.num_computed += len(chunk.tokens)
                continue
            accepted = len(tokens) - 1
            seq.num_computed += len(chunk.tokens) - chunk.n_draft + accepted
            if chunk.n_draft:
                seq.draft_len = adapt_draft(
                    seq.draft_len, chunk.n_draft, accepted, seq.request.params.draft_max
                )
            reason: FinishReason | None = None
            params = seq.request.params
            new: list[int] = []
            for token in tokens:
                if (is_eog(token) and not params.ignore_eos) or token in params.stop_token_ids:
                    reason = FinishReason.STOP
                    break
                seq.tokens.append(token)
                new.append(token)
                if len(seq.tokens) >= seq.max_total_tokens:
                    reason = FinishReason.LENGTH
                    break
            # Ended inside an accepted draft: the cells past the kept tokens are the next request's to drop.
            seq.num_computed = min(seq.num_computed, len(seq.tokens))
            if reason is not None:
                self.finish(seq.request_id, reason)
            results.append(StepResult(seq, tuple(new), reason is not None, len(tokens), chunk.n_draft))
        self._scheduled = []
        return results

    def drop_tail(self, seq: Sequence, n: int) -> None:
        """Forget a sequence's last ``n`` tokens (sampled past a stop string in an accepted draft); KV
        cells past the kept tokens are the next request's to drop."""
        del seq.tokens[len(seq.tokens) - n :]
        seq.num_computed = min(seq.num_computed, len(seq.tokens))

    def finish(self, request_id: str, reason: FinishReason) -> Sequence | None:
        """End a sequence (done, stop string, client gone); its slot is free for the next step."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return None
        if seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.slots.release(seq.slot, seq.tokens[: seq.num_computed], seq.request.cache_scope)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        return seq

    def finish_all(self, request_ids: Iterable[str], reason: FinishReason) -> list[Sequence]:
        done = [self.finish(rid, reason) for rid in list(request_ids)]
        return [seq for seq in done if seq is not None]
