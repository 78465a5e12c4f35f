"""Plain helpers of the API tests (fixtures live in ``tests/api/conftest.py``).

The tiny random-weight model answers gibberish, so tests steer it with ``logit_bias``: token 3 + byte
value is that byte, and token 2 is the end-of-sequence token.
"""

from __future__ import annotations

from typing import Any

import openai

from tests.conftest import TINY

EOS = "2"


def byte_token(ch: str) -> str:
    """The tiny model's token id (as a ``logit_bias`` key) of the one-byte character ``ch``."""
    return str(3 + ord(ch))


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    """A chat completion on the tiny model ("Say hello" unless ``messages`` is given)."""
    args: dict[str, Any] = {"model": TINY, "messages": [{"role": "user", "content": "Say hello"}]}
    args.update(kw)
    return client.chat.completions.create(**args)
