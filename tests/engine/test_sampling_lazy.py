"""Lazy grammars (tool_choice "auto"): free text until a trigger pattern matches, the grammar from there.

Checked on the real (tiny) model: the trigger arms the grammar exactly where it matches, text before it
is untouched, a trigger whose text the grammar rejects leaves the output free (where llama.cpp's own
lazy sampler would abort the process), and a request that never triggers samples exactly as without a
grammar -- on the numpy fast paths too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmhost.engine.async_engine import Engine
from llmhost.engine.runner import LlamaRunner, RunnerConfig
from llmhost.engine.sampling import SequenceSampler, _TriggerWatch, fast_path
from llmhost.engine.types import GenerationRequest, RequestOutput, SamplingParams
from llmhost.errors import RequestError

EOS = 2
PIECE_A, PIECE_T = 264, 263  # the tiny vocabulary's normal pieces "a" and "t"
PROMPT = [1, 40, 41, 42]


def byte_token(ch: str) -> int:
    return 3 + ord(ch)  # <0x00> is token 3


@pytest.fixture(scope="module")
def runner(tiny_model_path: Path) -> Iterator[LlamaRunner]:
    r = LlamaRunner(tiny_model_path, RunnerConfig(n_ctx_slot=512, n_slots=2, n_batch=64, n_threads=1))
    yield r
    r.close()


@pytest.fixture(scope="module")
def engine(runner: LlamaRunner) -> Iterator[Engine]:
    eng = Engine(runner, max_queue=8, name="tiny")
    eng.start()
    yield eng
    eng.stop()


def run(engine: Engine, rid: str, params: SamplingParams) -> tuple[list[int], str, RequestOutput]:
    ids: list[int] = []
    text = ""
    last: RequestOutput | None = None
    for out in engine.generate_sync(GenerationRequest(rid, PROMPT, params)):
        assert out.error is None, out.error
        ids.extend(out.token_ids)
        text += out.text
        last = out
    assert last is not None
    return ids, text, last


def lazy(grammar: str, *triggers: str, **kw: object) -> SamplingParams:
    return SamplingParams(grammar=grammar, grammar_lazy=True, grammar_triggers=triggers, **kw)  # type: ignore[arg-type]


# --- which path samples -------------------------------------------------------------------------------------


def test_a_lazy_grammar_keeps_the_fast_paths_until_it_triggers() -> None:
    assert fast_path(lazy('root ::= "a"', "(a)", temperature=0.0)) == "greedy"
    assert fast_path(lazy('root ::= "a"', "(a)", temperature=1.0)) == "draw"
    assert fast_path(SamplingParams(temperature=0.0, grammar='root ::= "a"')) is None


def test_the_trigger_arms_the_grammar_and_leaves_the_fast_path(runner: LlamaRunner) -> None:
    params = lazy('root ::= "<tool_call>" "{" "}"', "(<tool_call>)", temperature=0.0)
    sampler = SequenceSampler(runner.vocab.vocab, runner.vocab.n_vocab, 512, params)
    try:
        assert sampler.fast == "greedy" and sampler.chain is None and sampler.grammar is None
        for ch in "Sure: <tool_call":
            sampler._watch_token(byte_token(ch))
        assert sampler.grammar is None
        sampler._watch_token(byte_token(">"))
        assert sampler.grammar is not None and sampler.chain is not None and sampler.fast is None
        assert sampler._grammar_allows(sampler.grammar, byte_token("{"))
        assert not sampler._grammar_allows(sampler.grammar, byte_token("x"))
    finally:
        sampler.free()


def test_a_trigger_whose_text_the_grammar_rejects_leaves_the_output_free(runner: LlamaRunner) -> None:
    # The pattern matches "<x" but the grammar only accepts "<y": nothing is armed, nothing crashes, and
    # the watch goes on to the next match.
    params = lazy('root ::= "<y" "z"', "(<.)", temperature=0.0)
    sampler = SequenceSampler(runner.vocab.vocab, runner.vocab.n_vocab, 512, params)
    try:
        for ch in "a <x b":
            sampler._watch_token(byte_token(ch))
        assert sampler.grammar is None and sampler._watch is not None
        for ch in " <y":
            sampler._watch_token(byte_token(ch))
        assert sampler.grammar is not None
        assert sampler._grammar_allows(sampler.grammar, byte_token("z"))
    finally:
        sampler.free()


def test_a_lazy_grammar_is_parsed_up_front(runner: LlamaRunner) -> None:
    with pytest.raises(RequestError):
        SequenceSampler(runner.vocab.vocab, runner.vocab.n_vocab, 512, lazy("root ::= nope", "(a)"))
    with pytest.raises(RequestError):
        SequenceSampler(runner.vocab.vocab, runner.vocab.n_vocab, 512, lazy('root ::= "a"', "(unclosed"))
    with pytest.raises(RequestError):
        SequenceSampler(runner.vocab.vocab, runner.vocab.n_vocab, 512, lazy('root ::= "a"'))


# --- the trigger watch --------------------------------------------------------------------------------------


def test_the_watch_reports_where_the_first_capture_group_starts() -> None:
    watch = _TriggerWatch((r"^\s*(\{)", r"(<tool_call>)"))
    assert watch.add(1, b"Hi ") is None
    assert watch.add(2, b"<tool_") is None
    assert watch.add(3, b"call>\n") == 3


def test_the_watch_replays_generated_tokens_and_retokenizes_a_cut_one() -> None:
    watch = _TriggerWatch((r"(<t>)",))
    for token, piece in [(1, b"x"), (2, b"y<"), (3, b"t>"), (4, b"!")]:
        watch.add(token, piece)
    assert watch.tokens_from(2, lambda text: [100 + len(text)]) == [101, 3, 4]  # "<" of "y<" re-tokenized
    assert watch.tokens_from(1, lambda text: [0]) == [2, 3, 4]


def test_the_watch_forgets_text_before_a_dead_trigger() -> None:
    watch = _TriggerWatch((r"(<.)",))
    assert watch.add(1, b"<x") == 0
    watch.drop_until(1)
    assert watch.add(2, b" ") is None
    assert watch.add(3, b"<y") == 3


# --- end to end on the engine -------------------------------------------------------------------------------


def test_the_grammar_takes_over_where_the_trigger_matched(engine: Engine) -> None:
    # A bias makes the model write "a" forever; once "a" triggers, the grammar allows only "ttt", then
    # the end of generation.
    params = lazy(
        'root ::= "a" "t" "t" "t"', "(a)", max_tokens=20, temperature=0.0, logit_bias={PIECE_A: 50.0}
    )
    _, text, last = run(engine, "lazy-bias", params)
    assert text == "attt"
    assert last.finish_reason == "stop"


def test_a_greedy_request_switches_from_the_fast_path_to_the_grammar(engine: Engine) -> None:
    free_ids, _, _ = run(engine, "free", SamplingParams(max_tokens=32, temperature=0.0, logit_bias={}))
    # Trigger on the first single-letter token the model writes; the grammar then forces "ttt".
    pieces = [engine_piece(engine, t) for t in free_ids]
    at = next(i for i, p in enumerate(pieces) if len(p) == 1 and p.isalnum() and p not in "".join(pieces[:i]))
    letter = pieces[at]
    params = lazy(f'root ::= "{letter}" "ttt"', f"({letter})", max_tokens=32, temperature=0.0)
    assert fast_path(params) == "greedy"
    ids, text, last = run(engine, "switch", params)
    assert ids[: at + 1] == free_ids[: at + 1]
    assert text == "".join(pieces[: at + 1]) + "ttt"
    assert last.finish_reason == "stop"


def engine_piece(engine: Engine, token: int) -> str:
    return engine.runner.vocab.piece(token).decode("utf-8", errors="replace")  # type: ignore[attr-defined]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_without_a_trigger_the_output_is_as_without_a_grammar(engine: Engine, temperature: float) -> None:
    plain = SamplingParams(max_tokens=24, temperature=temperature, seed=5, logit_bias={EOS: -100.0})
    never = lazy(
        'root ::= "x"',
        "(NEVER-WRITTEN)",
        max_tokens=24,
        temperature=temperature,
        seed=5,
        logit_bias={EOS: -100.0},
    )
    assert run(engine, "plain", plain)[0] == run(engine, "never", never)[0]
    fast_plain = SamplingParams(max_tokens=24, temperature=temperature, seed=5)
    fast_never = lazy('root ::= "x"', "(NEVER-WRITTEN)", max_tokens=24, temperature=temperature, seed=5)
    assert fast_path(fast_never) == fast_path(fast_plain) is not None
    assert run(engine, "fplain", fast_plain)[0] == run(engine, "fnever", fast_never)[0]
