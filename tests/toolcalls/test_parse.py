"""ToolCallParser: content and tool-call fragments out of streamed model text, for every syntax."""

from __future__ import annotations

import json
import random

import pytest

from llmhost.core.types import Tool, ToolCallDelta
from llmhost.toolcalls import ParsedEvent, ToolCallParser, ToolSyntax, parse_all

TOOLS = [Tool("get_weather"), Tool("add")]
H, L, M = ToolSyntax.HERMES, ToolSyntax.LLAMA3, ToolSyntax.MISTRAL


def stream(
    syntax: ToolSyntax, text: str, *, parallel: bool = True, sizes: list[int] | None = None
) -> tuple[ToolCallParser, list[ParsedEvent]]:
    """Feed ``text`` in pieces of the given sizes (default: one character at a time)."""
    parser = ToolCallParser(syntax, TOOLS, parallel=parallel)
    events: list[ParsedEvent] = []
    pos, i = 0, 0
    while pos < len(text):
        size = sizes[i % len(sizes)] if sizes else 1
        events += parser.feed(text[pos : pos + size])
        pos, i = pos + size, i + 1
    events += parser.finish()
    return parser, events


def summary(syntax: ToolSyntax, text: str, **kw: bool) -> tuple[str, list[tuple[str, str]], bool]:
    parser, events = stream(syntax, text, **kw)  # type: ignore[arg-type]
    assert parser.content == "".join(e for e in events if isinstance(e, str))
    return parser.content, [(c.name, c.arguments) for c in parser.parsed_calls], parser.truncated


def hermes(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


CASES = [
    (
        H,
        "Sure.\n" + hermes("get_weather", '{"city": "Paris"}'),
        "Sure.",
        [("get_weather", '{"city": "Paris"}')],
    ),
    (
        H,
        hermes("add", '{"a": 1}') + "\n" + hermes("add", '{"a": [2, {"b": null}]}'),
        "",
        [("add", '{"a": 1}'), ("add", '{"a": [2, {"b": null}]}')],
    ),
    (H, '{"name": "add", "arguments": {"a": 1}}', "", [("add", '{"a": 1}')]),  # bare call, no tags
    (L, '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [("get_weather", '{"city": "Oslo"}')]),
    (L, '<|python_tag|>{"type": "function", "name": "add", "parameters": {}}', "", [("add", "{}")]),
    (
        L,
        '{"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {"a": 2}}',
        "",
        [("add", '{"a": 1}'), ("add", '{"a": 2}')],
    ),
    (
        M,
        '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}, "id": "abcdefghi"}, {"name": "get_weather", '
        '"arguments": {"city": "Rome"}}]',
        "",
        [("add", '{"a": 1}'), ("get_weather", '{"city": "Rome"}')],
    ),
    (M, ' [{"name": "add", "arguments": {"a": 1}}]', "", [("add", '{"a": 1}')]),  # marker hidden
    (M, 'Calling.[TOOL_CALLS][{"name": "add", "arguments": {}}]', "Calling.", [("add", "{}")]),
]


@pytest.mark.parametrize(("syntax", "text", "content", "calls"), CASES)
@pytest.mark.parametrize("sizes", [None, [3], [7, 1, 2], [10_000]])
def test_calls_are_read_whatever_the_chunking(
    syntax: ToolSyntax, text: str, content: str, calls: list[tuple[str, str]], sizes: list[int] | None
) -> None:
    assert summary(syntax, text, sizes=sizes) == (content, calls, False)  # type: ignore[arg-type]


def test_random_chunkings_agree() -> None:
    text = "Let me look.\n\n" + hermes("get_weather", '{"city": "São Paulo", "n": -1.5e3}') + "\nDone."
    expected = summary(H, text)
    rng = random.Random(7)
    for _ in range(50):
        sizes = [rng.randint(1, 9) for _ in range(20)]
        assert summary(H, text, sizes=sizes) == expected  # type: ignore[arg-type]
    assert expected == ("Let me look.Done.", [("get_weather", '{"city": "São Paulo", "n": -1.5e3}')], False)


def test_fragments_stream_name_first_then_the_arguments_as_they_arrive() -> None:
    _, events = stream(H, "Hi " + hermes("get_weather", '{"city": "Paris"}'), sizes=[4])
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    first = deltas[0]
    assert first.index == 0 and first.name == "get_weather" and first.arguments == ""
    assert first.id is not None and first.id.startswith("call_")
    assert all(d.id is None and d.name is None and d.index == 0 for d in deltas[1:])
    assert len(deltas) > 3  # the arguments came in several pieces
    assert "".join(d.arguments for d in deltas) == '{"city": "Paris"}'


def test_each_call_gets_its_own_index_and_id() -> None:
    parser, events = stream(H, hermes("add", "{}") + hermes("get_weather", "{}"))
    firsts = [e for e in events if isinstance(e, ToolCallDelta) and e.name]
    assert [(d.index, d.name) for d in firsts] == [(0, "add"), (1, "get_weather")]
    assert firsts[0].id != firsts[1].id
    assert [c.id for c in parser.parsed_calls] == [d.id for d in firsts]


def test_mistral_calls_get_nine_character_ids() -> None:
    parser, _ = stream(M, '[{"name": "add", "arguments": {}}]')
    assert len(parser.parsed_calls[0].id) == 9 and parser.parsed_calls[0].id.isalnum()


@pytest.mark.parametrize("syntax", list(ToolSyntax))
def test_marker_text_never_reaches_the_client(syntax: ToolSyntax) -> None:
    marker = {H: "<tool_call>", L: "<|python_tag|>", M: "[TOOL_CALLS]"}[syntax]
    body = {
        H: '{"name": "add", "arguments": {"x": 1}}</tool_call>',
        L: '{"name": "add", "parameters": {"x": 1}}',
        M: '[{"name": "add", "arguments": {"x": 1}}]',
    }[syntax]
    _, events = stream(syntax, "Working on it " + marker + body)
    texts = [e for e in events if isinstance(e, str)]
    assert "".join(texts) == "Working on it"
    assert not any(part in t for t in texts for part in ("<", "[", "{", "|"))


def test_text_that_only_looks_like_a_marker_is_passed_on() -> None:
    assert summary(H, "a < b and <tool> and <tool_ca") == ("a < b and <tool> and <tool_ca", [], False)
    assert summary(M, "see [TOOL] and [1, 2]") == ("see [TOOL] and [1, 2]", [], False)


def test_held_back_text_is_released_once_it_cannot_be_a_marker() -> None:
    parser = ToolCallParser(H, TOOLS)
    assert parser.feed("Hello <tool") == ["Hello"]
    assert parser.feed("s are nice") == [" <tools are nice"]
    assert parser.finish() == []


def test_a_call_to_an_unknown_tool_stays_text() -> None:
    text = 'I would <tool_call>{"name": "launch", "arguments": {}}</tool_call> now'
    assert summary(H, text) == (text, [], False)
    assert summary(L, '{"name": "launch", "parameters": {}}') == (
        '{"name": "launch", "parameters": {}}',
        [],
        False,
    )


def test_json_that_is_not_a_call_stays_text() -> None:
    assert summary(L, '{"answer": 42}') == ('{"answer": 42}', [], False)
    assert summary(L, '{"type": "person", "age": 3} ok') == ('{"type": "person", "age": 3} ok', [], False)
    assert summary(H, '<tool_call>{"id": 1}</tool_call>') == ('<tool_call>{"id": 1}</tool_call>', [], False)
    assert summary(H, '  {"city": "Paris"} is JSON') == ('  {"city": "Paris"} is JSON', [], False)
    assert summary(M, "[1, 2, 3]") == ("[1, 2, 3]", [], False)


def test_a_marker_without_a_call_object_stays_text() -> None:
    assert summary(H, "<tool_call>oops") == ("<tool_call>oops", [], False)
    assert summary(M, "[TOOL_CALLS]get_weather") == ("[TOOL_CALLS]get_weather", [], False)


def test_a_call_cut_off_after_its_name_is_completed() -> None:
    content, calls, truncated = summary(H, '<tool_call>{"name": "get_weather", "arguments": {"city": "Par')
    assert (content, calls, truncated) == ("", [("get_weather", '{"city": "Par"}')], True)


@pytest.mark.parametrize(
    "partial",
    [
        '{"a": [1, 2',
        '{"a": "x\\',
        '{"a": "\\u00',
        '{"a": tr',
        '{"a": -',
        '{"a": 1.',
        '{"a"',
        '{"a": 1,',
        '{"a":',
        "{",
        "",
    ],
)
def test_completed_arguments_always_parse(partial: str) -> None:
    _, calls, truncated = summary(H, '<tool_call>{"name": "add", "arguments": ' + partial)
    assert truncated
    assert isinstance(json.loads(calls[0][1]), dict)
    assert calls[0][1].startswith(partial)


def test_a_call_cut_off_before_its_name_is_complete_becomes_text() -> None:
    assert summary(H, 'Hmm <tool_call>{"name": "get_w') == ('Hmm <tool_call>{"name": "get_w', [], False)


def test_broken_json_after_the_name_ends_the_call() -> None:
    content, calls, truncated = summary(H, '<tool_call>{"name": "add", "arguments": {"a": 1]}</tool_call> ok')
    assert calls == [("add", '{"a": 1}')] and truncated
    assert content == "]}</tool_call> ok"


def test_without_parallel_only_the_first_call_counts() -> None:
    text = hermes("add", '{"a": 1}') + hermes("add", '{"a": 2}') + " trailing text"
    parser, _ = stream(H, text, parallel=False)
    assert [(c.name, c.arguments) for c in parser.parsed_calls] == [("add", '{"a": 1}')]
    assert parser.content == "" and parser.done


def test_done_turns_true_as_soon_as_the_single_call_is_complete() -> None:
    parser = ToolCallParser(H, TOOLS, parallel=False)
    parser.feed('<tool_call>{"name": "add", "arguments": {"a": 1}')
    assert not parser.done
    parser.feed("}")
    assert parser.done
    assert parser.feed("\n</tool_call> more") == []


def test_content_after_calls_is_passed_on_with_parallel() -> None:
    assert summary(H, hermes("add", "{}") + "\n\nI called it.") == ("I called it.", [("add", "{}")], False)


def test_arguments_written_as_a_json_string_are_decoded() -> None:
    text = '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>'
    assert summary(H, text)[1] == [("add", '{"a": 1}')]


def test_arguments_before_the_name_wait_for_the_name() -> None:
    _, events = stream(H, '<tool_call>{"arguments": {"a": 1}, "name": "add"}</tool_call>')
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[0].name == "add"
    assert "".join(d.arguments for d in deltas) == '{"a": 1}'


def test_a_call_without_arguments_gets_an_empty_object() -> None:
    assert summary(L, '{"name": "add"}')[1] == [("add", "{}")]


def test_plain_text_passes_through_unchanged() -> None:
    text = "Just an answer.\n  With spaces, {braces} and [brackets] in the middle.  \n"
    assert summary(H, text) == (text, [], False)
    assert summary(M, text) == (text, [], False)


def test_leading_whitespace_before_a_call_is_dropped_but_kept_before_text() -> None:
    assert summary(L, '\n\n{"name": "add", "parameters": {}}') == ("", [("add", "{}")], False)
    assert summary(L, "\n\nHello") == ("\n\nHello", [], False)


def test_the_closing_tag_is_dropped_after_a_call_only() -> None:
    assert summary(H, hermes("add", "{}") + "\n</tool_call>\nok") == ("ok", [("add", "{}")], False)
    assert summary(H, "text</tool_call> more") == ("text</tool_call> more", [], False)


def test_parse_all_reads_a_whole_output() -> None:
    content, calls = parse_all(H, TOOLS, "Ok.\n" + hermes("add", '{"a": 1}'))
    assert content == "Ok." and [(c.name, c.arguments) for c in calls] == [("add", '{"a": 1}')]


def test_finish_is_final() -> None:
    parser = ToolCallParser(H, TOOLS)
    parser.feed("hi")
    assert parser.finish() == []
    assert parser.feed("more") == [] and parser.finish() == []
    assert parser.content == "hi"


def test_raw_control_characters_in_argument_strings_are_escaped() -> None:
    text = '<tool_call>{"name": "add", "arguments": {"code": "a\nb\tc", "n": 1}}</tool_call>'
    [(_, arguments)] = summary(H, text)[1]
    assert arguments == '{"code": "a\\nb\\tc", "n": 1}'
    assert json.loads(arguments) == {"code": "a\nb\tc", "n": 1}


def test_arguments_that_are_not_an_object_are_sent_whole_once_complete() -> None:
    assert summary(H, '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>')[1] == [("add", "[1, 2]")]
    assert summary(H, '<tool_call>{"name": "add", "arguments": "plain"}</tool_call>')[1] == [
        ("add", '"plain"')
    ]
    assert summary(H, '<tool_call>{"name": "add", "arguments": tru')[1] == [("add", "{}")]


PIECES = [
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "{", "}", "[", "]", '"name"', ":", ",",
    " ", "\n", '"get_weather"', '"add"', '"nope"', '"arguments"', '"parameters"', '"a"', "1", "-2.5", "true",
    "null", "text", "<", "<tool", '"x\\"y"', "\\", '"', ";",
]  # fmt: skip
STARTS = [
    '<tool_call>{"name": "add", "arguments": ',
    '{"name": "add", "parameters": ',
    '[{"name": "add", "arguments": ',
]


@pytest.mark.parametrize("parallel", [True, False])
def test_any_text_in_any_chunking_gives_the_same_answer_and_arguments_that_parse(parallel: bool) -> None:
    rng = random.Random(11)
    for _ in range(1500):
        syntax = rng.choice(list(ToolSyntax))
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25)))
        if rng.random() < 0.5:
            text = rng.choice(STARTS) + text
        answers = []
        for sizes in ([10_000], [1], [rng.randint(1, 5) for _ in range(7)]):
            parser, events = stream(syntax, text, parallel=parallel, sizes=sizes)
            arguments: dict[int, str] = {}
            for event in events:
                if isinstance(event, ToolCallDelta):
                    arguments[event.index] = arguments.get(event.index, "") + event.arguments
            calls = parser.parsed_calls
            assert [arguments[i] for i in sorted(arguments)] == [c.arguments for c in calls], text
            for tool_call in calls:
                json.loads(tool_call.arguments)
            answers.append((parser.content, [(c.name, c.arguments) for c in calls], parser.truncated))
        assert answers[0] == answers[1] == answers[2], text
