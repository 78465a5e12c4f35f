"""The pipeline's "validate" stage: what every request must satisfy, whatever door it came through.

Doors check their own wire shapes (field types, required fields); this stage checks meaning, once, for
all of them, so a rule here holds for the CLI as much as for any API.
"""

from __future__ import annotations

import re
from dataclasses import replace

from llmhost.core.stage import Request, StageBase
from llmhost.core.types import EmbedRequest, InferenceRequest, RequestContext
from llmhost.errors import RequestError

__all__ = ["MAX_EMBED_INPUTS", "MAX_STOP_SEQUENCES", "MAX_TOKENS", "ValidateStage", "check_tools"]

MAX_STOP_SEQUENCES = 16
MAX_EMBED_INPUTS = 2048
MAX_N = 128
# Token counts and ids are C ints in llama.cpp (and in every upstream's API); a seed may be any 64-bit
# value, signed (OpenAI's) or not. Past these, a number is a client mistake whatever door it came by,
# caught here rather than as an overflow deeper down, or sent on to an upstream.
MAX_TOKENS = 2**31 - 1
SEED_RANGE = (-(2**63), 2**64 - 1)
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def check_tools(request: InferenceRequest) -> None:
    """Tool names valid and unique, parameters a JSON-schema object, ``tool_choice`` satisfiable."""
    seen: set[str] = set()
    for i, tool in enumerate(request.tools):
        # Worded for every dialect (a tool's name and schema sit at other paths in each); ``param`` is
        # OpenAI's path, which only the OpenAI envelope shows.
        if not _TOOL_NAME.match(tool.name):
            raise RequestError(
                f"tool name {tool.name!r} must be 1-64 letters, digits, '_' or '-'",
                param=f"tools[{i}].function.name",
            )
        if tool.name in seen:
            raise RequestError(f"tool name {tool.name!r} is used twice", param=f"tools[{i}].function.name")
        seen.add(tool.name)
        schema = tool.parameters
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise RequestError(
                f"tool {tool.name!r}: its parameters (input schema) must be a JSON schema of type 'object'",
                param=f"tools[{i}].function.parameters",
            )
    choice = request.tool_choice
    if choice.mode in ("required", "tool") and not request.tools:
        raise RequestError(
            f"tool_choice '{choice.mode}' needs at least one tool in 'tools'", param="tool_choice"
        )
    if choice.mode == "tool" and choice.name not in seen:
        raise RequestError(
            f"tool_choice names the tool {choice.name!r}, which is not in 'tools'", param="tool_choice"
        )


class ValidateStage(StageBase):
    """Checks what no door may let through; an embedding request without a model gets
    ``default_embedding_model`` (``[embeddings] model``)."""

    name = "validate"

    def __init__(self, default_embedding_model: str = "") -> None:
        self.default_embedding_model = default_embedding_model

    async def before(self, ctx: RequestContext, request: Request) -> Request:
        if isinstance(request, EmbedRequest):
            if not request.model:
                if not self.default_embedding_model:
                    raise RequestError("you must provide a model", param="model")
                request = replace(request, model=self.default_embedding_model)
            if not request.inputs or any(len(x) == 0 for x in request.inputs):
                raise RequestError("input must be a non-empty string or array", param="input")
            if len(request.inputs) > MAX_EMBED_INPUTS:
                raise RequestError(f"at most {MAX_EMBED_INPUTS} inputs per request", param="input")
            return request
        if not request.model:
            raise RequestError("you must provide a model", param="model")
        if request.kind == "chat" and not request.messages:
            raise RequestError("messages must not be empty", param="messages")
        if request.kind == "completion" and len(request.prompt) == 0:
            raise RequestError("prompt must not be empty", param="prompt")
        s = request.sampling
        if s.max_tokens is not None and not 1 <= s.max_tokens <= MAX_TOKENS:
            raise RequestError(f"max_tokens must be between 1 and {MAX_TOKENS}", param="max_tokens")
        if s.seed is not None and not SEED_RANGE[0] <= s.seed <= SEED_RANGE[1]:
            raise RequestError("seed must be a 64-bit integer", param="seed")
        if any(not 0 <= token <= MAX_TOKENS for token in s.logit_bias):
            raise RequestError("logit_bias keys must be token ids (0 and up)", param="logit_bias")
        if s.temperature is not None and not 0.0 <= s.temperature <= 2.0:
            raise RequestError("temperature must be between 0 and 2", param="temperature")
        if s.top_p is not None and not 0.0 <= s.top_p <= 1.0:
            raise RequestError("top_p must be between 0 and 1", param="top_p")
        if s.top_k is not None and not 0 <= s.top_k <= 1 << 20:
            raise RequestError("top_k must be between 0 and 1048576", param="top_k")
        if not 1 <= s.n <= MAX_N:
            raise RequestError(f"n must be between 1 and {MAX_N}", param="n")
        if s.logprobs is not None and not 0 <= s.logprobs <= 20:
            raise RequestError("top_logprobs must be between 0 and 20", param="top_logprobs")
        if len(s.stop) > MAX_STOP_SEQUENCES:
            raise RequestError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop")
        if request.echo and s.logprobs is not None:
            raise RequestError("logprobs together with echo is not supported", param="logprobs")
        if any(not 0 <= token <= MAX_TOKENS for token in request.prefix_tokens):
            raise RequestError("context must be a list of token ids (0 and up)", param="context")
        check_tools(request)
        return request
