"""Incremental detokenization: split UTF-8 and stop strings that span tokens."""

from __future__ import annotations

from llmhost.engine.detokenizer import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    out = "".join(stream.feed(p) for p in pieces)
    return out + stream.flush()


def test_utf8_split_across_tokens() -> None:
    data = "héllo 👋".encode()
    assert feed_all(TextStream(), [data[i : i + 1] for i in range(len(data))]) == "héllo 👋"


def test_stop_string_spanning_tokens_is_cut_and_not_emitted() -> None:
    s = TextStream(("<end>",))
    emitted = [s.feed(p) for p in [b"Hi <e", b"nd", b"> more"]]
    assert "".join(emitted) == "Hi "
    assert s.stopped
    assert s.flush() == ""


def test_partial_stop_is_held_back_then_released() -> None:
    s = TextStream(("STOP",))
    assert s.feed(b"abc ST") == "abc "
    assert s.feed(b"ART") == "START"
    assert not s.stopped


def test_earliest_stop_wins() -> None:
    s = TextStream(("b", "a"))
    assert s.feed(b"xxab") == "xx"


def test_held_text_is_flushed_at_the_end() -> None:
    s = TextStream(("<|im_end|>",))
    assert s.feed(b"done<|im") == "done"
    assert s.flush() == "<|im"
