"""Loopback servers speaking Anthropic's, Ollama's and OpenAI's wire formats, built from their API docs.

Each answers deterministically: the reply is ``"echo: <last user text>"``, cut into word pieces
(``"echo:"``, ``" hello"``, ...), one piece per token. Usage counts whitespace-separated words of the
prompt and the pieces sent; ``max_tokens`` / ``num_predict`` cut the pieces (finish ``length``), a stop
sequence cuts the text before it (finish ``stop``). Every request is recorded in ``app.state.requests``
(``{"path", "headers", "body"}``) so tests can check what reached the upstream.

Tools: when a request offers tools and its last turn is the user's, the answer calls every offered tool
whose name appears in the user's text (only the first when parallel calls are off), or the forced /
first tool when the tool choice requires a call; each call's arguments are ``{"text": <user text>}``
and counts 5 completion tokens. When the last turn carries tool results, the answer echoes the last
result's text. History is checked the way the real APIs check it (a tool result must answer a call
made earlier, Anthropic's roles must alternate, ...).

Logprobs (OpenAI, Ollama): every piece has logprob -0.5; its top alternatives are the piece itself and
``" x"`` (-2.0).

Model names trigger failures: ``*overloaded*`` answers 529 (Anthropic), ``*error-midstream*`` streams
two pieces (fragments) and then an in-band error. Each dialect's own details are in its module:
``wire_anthropic``, ``wire_ollama``, ``wire_openai``.
"""

from __future__ import annotations

from tests.providers.wire_anthropic import anthropic_app
from tests.providers.wire_common import EchoAnswer, echo_answer, recorded, tools_to_call, words
from tests.providers.wire_ollama import ollama_app
from tests.providers.wire_openai import openai_app

__all__ = [
    "EchoAnswer",
    "anthropic_app",
    "echo_answer",
    "ollama_app",
    "openai_app",
    "recorded",
    "tools_to_call",
    "words",
]
