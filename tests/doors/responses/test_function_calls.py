"""Function calling through the Responses door, with a scripted model behind the pipeline: what the
client sees of a call, and what the model is prompted with when the client answers it.

The scripted model is a real :class:`~llmhost.core.pipeline.Generator`: it calls the tool the request
names (or its first tool) until it has a tool result, then says "done". It records every request, so
the tests read the conversation exactly as the door translated it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from llmhost.config import Settings
from llmhost.core.pipeline import Pipeline
from llmhost.core.stream import ResultBuilder
from llmhost.core.types import (
    ChatMessage,
    Delta,
    Embeddings,
    EmbedRequest,
    InferenceRequest,
    RequestContext,
    Result,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from llmhost.doors.http.app import create_app
from llmhost.service import Service
from tests.conftest import TINY, LiveServer

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"town": {"type": "string"}}, "required": ["town"]},
}
TIME: Any = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}


class ScriptedModel:
    """Calls a tool while it has tools and no tool result yet; answers "done" otherwise."""

    def __init__(self) -> None:
        self.requests: list[InferenceRequest] = []

    async def _deltas(self, request: InferenceRequest) -> AsyncIterator[Delta]:
        if request.tools and request.messages[-1].role != "tool":
            name = request.tool_choice.name or request.tools[0].name
            yield Delta(0, "Checking. ")
            yield Delta(0, tool_calls=(ToolCallDelta(0, "call_abc", name, '{"town":'),))
            yield Delta(0, tool_calls=(ToolCallDelta(0, arguments=' "Oslo"}'),))
            yield Delta(0, finish_reason="tool_calls")
        else:
            yield Delta(0, "done")
            yield Delta(0, finish_reason="stop")
        yield Delta(-1, usage=Usage(sum(len(m.content) + 1 for m in request.messages), 3))

    async def answer(self, ctx: RequestContext, request: InferenceRequest) -> Result:
        self.requests.append(request)
        built = ResultBuilder("r", request.model)
        async for delta in self._deltas(request):
            built.add(delta)
        return built.result()

    async def open_stream(self, ctx: RequestContext, request: InferenceRequest) -> AsyncIterator[Delta]:
        self.requests.append(request)
        return self._deltas(request)

    async def embed(self, ctx: RequestContext, request: EmbedRequest) -> Embeddings:
        return Embeddings([[0.0] for _ in request.inputs])

    async def count_tokens(self, ctx: RequestContext, request: InferenceRequest) -> int:
        return sum(len(m.content) + 1 for m in request.messages)


@pytest.fixture
def model() -> ScriptedModel:
    return ScriptedModel()


@pytest.fixture
def client(settings: Settings, service: Service, model: ScriptedModel) -> Iterator[openai.OpenAI]:
    app = create_app(settings, service)
    app.state.pipeline = Pipeline(model, ())
    live = LiveServer(app).start()
    yield openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="unused", max_retries=0)
    live.stop()


def test_a_call_is_a_function_call_item_after_the_text(client: openai.OpenAI) -> None:
    resp: Any = client.responses.create(
        model=TINY, input="Weather in Oslo?", tools=[WEATHER], tool_choice="required"
    )
    message, call = resp.output
    assert message.type == "message" and resp.output_text == "Checking. "
    assert call.type == "function_call" and call.id.startswith("fc_") and call.call_id == "call_abc"
    assert (call.name, json.loads(call.arguments), call.status) == (
        "get_weather",
        {"town": "Oslo"},
        "completed",
    )
    assert resp.status == "completed"


def test_the_tool_request_reaches_the_model(client: openai.OpenAI, model: ScriptedModel) -> None:
    client.responses.create(
        model=TINY,
        input="Time?",
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "name": "get_time"},
        parallel_tool_calls=False,
    )
    [request] = model.requests
    assert [t.name for t in request.tools] == ["get_weather", "get_time"]
    assert request.tools[0].parameters == WEATHER["parameters"]
    assert (request.tool_choice.mode, request.tool_choice.name) == ("tool", "get_time")
    assert request.parallel_tool_calls is False


def test_answering_a_call_by_previous_response_id_prompts_the_whole_exchange(
    client: openai.OpenAI, model: ScriptedModel
) -> None:
    first: Any = client.responses.create(
        model=TINY, input="Weather?", instructions="Use tools.", tools=[WEATHER]
    )
    call = first.output[1]
    second = client.responses.create(
        model=TINY,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "done"
    assert model.requests[0].messages[0] == ChatMessage("system", "Use tools.")
    assert model.requests[1].messages == (  # the earlier instructions are not carried over
        ChatMessage("user", "Weather?"),
        ChatMessage(
            "assistant", "Checking. ", tool_calls=(ToolCall("call_abc", "get_weather", '{"town": "Oslo"}'),)
        ),
        ChatMessage("tool", "sunny", tool_call_id="call_abc", name="get_weather"),
    )
    kinds = [i.type for i in client.responses.input_items.list(second.id, order="asc").data]
    assert kinds == ["message", "message", "function_call", "function_call_output"]


def test_a_streamed_call_arrives_through_the_sdks_stream_helper(client: openai.OpenAI) -> None:
    with client.responses.stream(model=TINY, input="Weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final: Any = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert kinds.index("response.output_text.done") < kinds.index("response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == '{"town": "Oslo"}'
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.status == "completed"
    assert [i.type for i in final.output] == ["message", "function_call"]
    assert final.output[1].arguments == '{"town": "Oslo"}' and final.output[1].call_id == "call_abc"


def test_streamed_calls_are_stored_for_the_next_turn(client: openai.OpenAI, model: ScriptedModel) -> None:
    events: list[Any] = list(
        client.responses.create(model=TINY, input="Weather?", tools=[WEATHER], stream=True)
    )
    first = events[-1].response
    client.responses.create(
        model=TINY,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_abc", "output": "rain"}],
    )
    assert model.requests[-1].messages[-1] == ChatMessage(
        "tool", "rain", tool_call_id="call_abc", name="get_weather"
    )
