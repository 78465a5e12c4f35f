"""Plain data passed between the engine's parts: requests, sampling parameters, step outputs.

Nothing here imports llama_cpp, so the scheduler and its tests run without a model.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "FinishReason",
    "GenerationRequest",
    "RequestOutput",
    "SamplingParams",
    "ScheduledChunk",
    "SchedulerOutput",
    "TokenLogprob",
]


class FinishReason(enum.StrEnum):
    """Why a sequence stopped, with OpenAI's names."""

    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context window reached
    ABORT = "abort"  # the client went away or the request was cancelled


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling; the defaults match OpenAI's."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()  # e.g. a chat format's end-of-turn control token
    grammar: str | None = None  # GBNF, root rule "root"
    # Lazy grammar (tool_choice "auto"): ``grammar`` applies only once the generated text matches one of
    # ``grammar_triggers`` (regular expressions, searched in the text so far); it then constrains the
    # text from the pattern's first capture group (else the whole match) on.
    grammar_lazy: bool = False
    grammar_triggers: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; N: each token's log-probability and its N likeliest rivals
    # Speculative decoding: "ngram" drafts the next tokens from the sequence's own earlier text
    # (llmhost.engine.ngram) and checks them all in one decode call; the output is the same.
    speculative: str | None = None
    draft_max: int = 16  # most tokens drafted a step
    # Token ids the answer is expected to repeat in large part (OpenAI's Predicted Outputs): drafts come
    # from them first (llmhost.engine.ngram.PredictionIndex), then from the sequence's own text. A speed
    # hint only: the output is the same with or without it.
    prediction: tuple[int, ...] = ()


@dataclass(eq=False, slots=True)
class GenerationRequest:
    """One sequence to generate. ``prompt_tokens`` is already tokenized.

    ``cache_scope`` names who asks (the API key's id; "" for anonymous): prefix reuse crosses scopes,
    the ``cached_tokens`` figure does not. ``__repr__`` shows token counts, never tokens, so prompts
    stay out of logs.
    """

    request_id: str
    prompt_tokens: list[int]
    params: SamplingParams
    cache_scope: str = ""

    def __repr__(self) -> str:
        return (
            f"GenerationRequest(id={self.request_id!r}, prompt_tokens={len(self.prompt_tokens)}, "
            f"max_tokens={self.params.max_tokens})"
        )


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Tokens of one sequence to feed in this step, starting at KV position ``start_pos``.

    ``sample`` is true when this chunk ends at the sequence's newest token, so its logits are needed.
    The last ``n_draft`` tokens are a speculative draft: logits are needed at each of them too, and the
    runner samples position by position while the draft agrees with what it samples.
    """

    request_id: str
    slot: int
    tokens: list[int]
    start_pos: int
    sample: bool
    n_draft: int = 0


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    """What the runner must decode in one step."""

    chunks: list[ScheduledChunk]

    @property
    def num_tokens(self) -> int:
        return sum(len(chunk.tokens) for chunk in self.chunks)

    def layout(self) -> list[tuple[int, int]]:
        """``(slot, n_tokens)`` per chunk, what :func:`llmhost.engine.layout.micro_batches` reads."""
        return [(chunk.slot, len(chunk.tokens)) for chunk in self.chunks]


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token's log-probability under the model (before sampling), and the likeliest tokens.

    ``token`` is the token's bytes; ``top`` lists ``(bytes, logprob)`` pairs, likeliest first.
    """

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True, slots=True)
class RequestOutput:
    """A delta for one request after a step: new text, and whether the request is done."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: FinishReason | None = None
    error: Exception | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in ``token_ids`` when the request asked
    stop_sequence: str | None = None  # the stop string that ended the text, if one did

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None
