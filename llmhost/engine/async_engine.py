"""The step loop: one background thread per loaded model drives scheduler and runner.

Doors never touch the runner. They call :meth:`Engine.generate` (async) or :meth:`Engine.generate_sync`
(threads, the CLI), which queue a request and yield :class:`RequestOutput` deltas as steps complete.
Cancelling the consumer (a client that disconnects) aborts the request; its slot is free the next step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from llmhost.engine.detokenizer import TextStream
from llmhost.engine.layout import micro_batches
from llmhost.engine.runner import LlamaRunner
from llmhost.engine.sampling import check_logit_bias
from llmhost.engine.scheduler import Scheduler, Sequence
from llmhost.engine.stats import EngineStats
from llmhost.engine.types import FinishReason, GenerationRequest, RequestOutput, TokenLogprob
from llmhost.errors import EngineError, LLMHostError

__all__ = ["Engine", "OutputStream"]

log = logging.getLogger(__name__)

Sink = Callable[[RequestOutput], None]


@dataclass(eq=False, slots=True)
class _Live:
    """Engine-side state of one request: where its outputs go and its text stream."""

    sink: Sink
    text: TextStream
    sent_tokens: int = 0
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    tokens_after_first: int = 0


class Engine:
    """Continuous batching over one :class:`LlamaRunner`, driven by a background thread."""

    def __init__(
        self, runner: LlamaRunner, *, max_queue: int = 64, name: str = "model", nice: int = 0
    ) -> None:
        self.runner = runner
        self.name = name
        self.nice = nice
        self.scheduler = Scheduler(
            n_slots=runner.n_slots,
            n_ctx_slot=runner.n_ctx_slot,
            max_batch_tokens=runner.n_batch,
            max_waiting=max_queue,
            max_draft_tokens=runner.n_draft_rows,
        )
        self._live: dict[str, _Live] = {}
        self._aborts: list[str] = []
        self._cv = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"llmhost-engine-{name}", daemon=True)
        self.steps = 0
        self.last_used = time.monotonic()
        self.stats = EngineStats()  # updated under ``_cv``; read with ``stats_snapshot``

    # ----- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the loop (open requests end with ``abort``) and free the model."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        self.runner.close()

    @property
    def active_requests(self) -> int:
        """Requests running or waiting in this engine."""
        return len(self._live)

    @property
    def busy_slots(self) -> int:
        return len(self.scheduler.running)

    @property
    def waiting(self) -> int:
        return len(self.scheduler.waiting)

    def stats_snapshot(self) -> EngineStats:
        """A consistent copy of the counters (for a metrics scrape, from any thread)."""
        with self._cv:
            return self.stats.copy()

    def kv_cells(self) -> tuple[int, int]:
        """KV cells in use: ``(held by running requests, kept by free slots for prefix reuse)``."""
        with self._cv:
            active = sum(seq.num_computed for seq in self.scheduler.running)
            return active, self.scheduler.slots.free_cached_tokens

    @property
    def kv_capacity(self) -> int:
        """KV cells of the context: every slot's window."""
        return self.runner.n_slots * self.runner.n_ctx_slot

    # ----- submitting --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, sink: Sink) -> None:
        """Queue a request; raises at once if it cannot fit, the queue is full, or a ``logit_bias`` key is
        no token of this model (checked here so a bad request never takes a slot or costs its prefix)."""
        check_logit_bias(request.params.logit_bias, self.runner.vocab.n_vocab)
        with self._cv:
            if self._stopping:
                raise EngineError("the model is being unloaded")
            self.scheduler.add(request)
            self._live[request.request_id] = _Live(sink, TextStream(request.params.stop))
            self.last_used = time.monotonic()
            self._cv.notify()

    def abort(self, request_id: str) -> None:
        """Stop a request (thread-safe); it leaves the batch at the next step."""
        with self._cv:
            if request_id in self._live:
                self._aborts.append(request_id)
                self._cv.notify()

    def stream(self, request: GenerationRequest) -> OutputStream:
        """Submit ``request`` now (errors raise here) and return an async iterator of its deltas."""
        loop = asyncio.get_running_loop()
        stream = OutputStream(self, request.request_id)

        def sink(out: RequestOutput) -> None:
            loop.call_soon_threadsafe(stream.put, out)

        self.submit(request, sink)
        return stream

    def generate_sync(self, request: GenerationRequest) -> Iterator[RequestOutput]:
        """Blocking twin of :meth:`generate` for threads and the CLI."""
        outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
        self.submit(request, outputs.put)
        finished = False
        try:
            while not finished:
                out = outputs.get()
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.abort(request.request_id)

    # ----- the loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        set_thread_nice(self.nice)
        while True:
            with self._cv:
                while not self._stopping and not self._aborts and not self.scheduler.has_work:
                    self._cv.wait()
                if self._stopping:
                    self._abort_all()
                    return
                emits = self._apply_aborts()
                admissions = self.scheduler.admit()
                for adm in admissions:
                    seq = self.scheduler.get(adm.request_id)
                    assert seq is not None
                    try:
                        kept = self.runner.start_sequence(adm.slot, adm.keep, seq.request.params)
                    except Exception as exc:  # a bad grammar or logit bias fails only this request
                        emits.append(self._fail(seq, exc))
                        continue
                    if not kept:
                        self.scheduler.prefix_lost(adm.request_id)
                    self.stats.prompt_tokens += seq.num_prompt_tokens
                    self.stats.prefix_hit_tokens += seq.num_computed
                batch = self.scheduler.schedule()
                if batch.chunks:
                    self.stats.steps += 1
                    self.stats.passes += len(micro_batches(batch.layout(), self.runner.n_ubatch))
            self._emit(emits)
            if not batch.chunks:
                continue
            try:
                sampled = self.runner.step(batch)
            except Exception as exc:
                log.exception("decode step failed")
                with self._cv:
                    failed = [self.scheduler.get(c.request_id) for c in batch.chunks]
                    emits = [self._fail(seq, exc) for seq in failed if seq is not None]
                self._emit(emits)
                continue
            self.steps += 1
            with self._cv:
                try:
                    emits = self._postprocess(sampled)
                except Exception as exc:  # a bug here must fail the step's requests, not stop the loop
                    log.exception("processing a decode step failed")
                    failed = [self.scheduler.get(c.request_id) for c in batch.chunks]
                    emits = [self._fail(seq, exc) for seq in failed if seq is not None]
            self._emit(emits)

    def _postprocess(self, sampled: dict[str, list[int]]) -> list[tuple[Sink, RequestOutput]]:
        emits: list[tuple[Sink, RequestOutput]] = []
        now = time.perf_counter()
        stats = self.stats
        for result in self.scheduler.update_from_output(sampled, self.runner.vocab.is_eog):
            seq = result.sequence
            if result.n_drafted:
                stats.draft_tokens += result.n_drafted
                stats.draft_accepted += result.n_sampled - 1
            live = self._live.get(seq.request_id)
            if live is None:
                continue
            # Each sampled token (an end-of-generation one included): the first ends the wait for the
            # first token, the others are the decode tokens that time per output token counts.
            if live.first_token_at is None:
                live.first_token_at = now
                stats.ttft.observe(now - live.submitted)
                live.tokens_after_first += result.n_sampled - 1
            else:
                live.tokens_after_first += result.n_sampled
            logprobs = self.runner.logprobs.get(seq.request_id, ())
            text = ""
            for i, token in enumerate(result.new_tokens):
                stats.generation_tokens += 1
                live.pending_ids.append(token)
                if i < len(logprobs):
                    live.pending_logprobs.append(logprobs[i])
                text += live.text.feed(self.runner.vocab.piece(token))
                if live.text.stopped:
                    # A stop string inside an accepted draft: what came after it was never generated.
                    extra = len(result.new_tokens) - i - 1
                    if extra:
                        self.scheduler.drop_tail(seq, extra)
                        if seq.finish_reason is FinishReason.LENGTH:
                            seq.finish_reason = FinishReason.STOP
                    if seq.finish_reason is None:
                        self.scheduler.finish(seq.request_id, FinishReason.STOP)
                    break
            reason = seq.finish_reason
            if reason is not None:
                text += live.text.flush()
                self._release(seq)
                if live.tokens_after_first and live.first_token_at is not None:
                    stats.tpot.observe((now - live.first_token_at) / live.tokens_after_first)
            if text or reason is not None:
                emits.append((live.sink, self._output(seq, live, text, reason)))
        return emits

    def _output(self, seq: Sequence, live: _Live, text: str, reason: FinishReason | None) -> RequestOutput:
        ids = tuple(live.pending_ids)
        live.pending_ids.clear()
        logprobs = tuple(live.pending_logprobs)
        live.pending_logprobs.clear()
        return RequestOutput(
            request_id=seq.request_id,
            text=text,
            token_ids=ids,
            prompt_tokens=seq.num_prompt_tokens,
            completion_tokens=seq.num_completion_tokens,
            cached_tokens=seq.cached_tokens,
            finish_reason=reason,
            logprobs=logprobs,
            stop_sequence=live.text.matched if reason is not None else None,
        )

    def _release(self, seq: Sequence) -> None:
        self._live.pop(seq.request_id, None)
        self.last_used = time.monotonic()
        if seq.slot >= 0:
            self.runner.end_sequence(seq.slot)

    def _apply_aborts(self) -> list[tuple[Sink, RequestOutput]]:
        emits = []
        for request_id in self._aborts:
            seq = self.scheduler.finish(request_id, FinishReason.ABORT)
            live = self._live.get(request_id)
            if seq is not None and live is not None:
                self._release(seq)
                emits.append((live.sink, self._output(seq, live, "", FinishReason.ABORT)))
        self._aborts.clear()
        return emits

    def _fail(self, seq: Sequence, exc: Exception) -> tuple[Sink, RequestOutput]:
        live = self._live.get(seq.request_id) or _Live(lambda out: None, TextStream())
        self.scheduler.finish(seq.request_id, FinishReason.ABORT)
        if seq.slot >= 0:
            self.runner.clear_slot(seq.slot)
            self.scheduler.slots.forget(seq.slot)
        self._release(seq)
        # llmhost's own errors keep their kind: a grammar llama.cpp cannot parse is the client's
        # RequestError (a 400 the gateway neither retries nor counts), not an engine failure.
        error = exc if isinstance(exc, LLMHostError | ValueError) else EngineError(str(exc))
        out = RequestOutput(seq.request_id, "", (), seq.num_prompt_tokens, seq.num_completion_tokens, 0)
        return live.sink, _with_error(out, error)

    def _abort_all(self) -> None:
        emits = []
        for request_id in list(self._live):
            seq = self.scheduler.finish(request_id, FinishReason.ABORT)
            live = self._live.pop(request_id)
            if seq is not None:
                emits.append((live.sink, self._output(seq, live, "", FinishReason.ABORT)))
        self._emit(emits)

    @staticmethod
    def _emit(emits: list[tuple[Sink, RequestOutput]]) -> None:
        for sink, out in emits:
            try:
                sink(out)
            except Exception:  # a closed event loop must not kill the engine
                log.debug("dropping output for %s", out.request_id, exc_info=True)


def set_thread_nice(nice: int) -> bool:
    """Give the calling thread (and the OpenMP workers it starts later, which inherit it) ``nice``.

    The decode threads spin at llama.cpp's barriers: when any other runnable thread on the machine takes
    a core from one of them mid-step, the others wait for it, so a step slows by much more than the CPU
    time taken. A higher priority for them makes that rare. Linux only (nice is per thread there); a
    negative value needs root or CAP_SYS_NICE, and without it the thread keeps its priority.
    """
    if nice == 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.info("decode threads keep their priority (nice %d not allowed: %s)", nice, exc.strerror)
        return False
    return True


class OutputStream:
    """Async iterator over one request's outputs; :meth:`cancel` (or leaving early) aborts it."""

    def __init__(self, engine: Engine, request_id: str) -> None:
        self._engine = engine
        self.request_id = request_id
        self._queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self.done = False

    def put(self, out: RequestOutput) -> None:
        self._queue.put_nowait(out)

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.done:
            raise StopAsyncIteration
        out = await self._queue.get()
        self.done = out.finished
        return out

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._engine.abort(self.request_id)


def _with_error(out: RequestOutput, error: Exception) -> RequestOutput:
    return RequestOutput(
        out.request_id,
        out.text,
        out.token_ids,
        out.prompt_tokens,
        out.completion_tokens,
        out.cached_tokens,
        None,
        error,
    )
