"""Typed messages and tools -> the dicts Hugging Face chat templates read."""

from __future__ import annotations

import pytest

from llmhost.core.types import ChatMessage, ContentPart, Tool, ToolCall
from llmhost.errors import RequestError
from llmhost.toolcalls import ToolSyntax, to_template_messages, to_template_tools

CALL = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')


def test_plain_messages_are_role_and_content() -> None:
    assert to_template_messages([ChatMessage("system", "S"), ChatMessage("user", "Q")]) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
    ]


def test_assistant_calls_carry_their_arguments_as_a_mapping() -> None:
    [message] = to_template_messages([ChatMessage("assistant", "", tool_calls=(CALL,))])
    assert message == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_abc",
                "type": "function",
                "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
            }
        ],
    }


def test_messages_without_calls_have_no_tool_calls_key() -> None:
    # Mistral's and Llama's templates test for the key, not for an empty list.
    [message] = to_template_messages([ChatMessage("assistant", "Hi")])
    assert "tool_calls" not in message


@pytest.mark.parametrize(("text", "value"), [("", {}), ("  ", {}), ("not json", "not json"), ("[1]", "[1]")])
def test_arguments_that_are_not_an_object_are_passed_on_as_text(text: str, value: object) -> None:
    [message] = to_template_messages([ChatMessage("assistant", tool_calls=(ToolCall("c", "f", text),))])
    assert message["tool_calls"][0]["function"]["arguments"] == value


def test_tool_results_get_the_name_of_the_call_they_answer() -> None:
    messages = to_template_messages(
        [
            ChatMessage("assistant", tool_calls=(CALL,)),
            ChatMessage("tool", "sunny", tool_call_id="call_abc"),
            ChatMessage("tool", "x", tool_call_id="call_zzz", name="given"),
            ChatMessage("tool", "y", tool_call_id="unknown"),
        ]
    )
    assert messages[1] == {
        "role": "tool",
        "content": "sunny",
        "tool_call_id": "call_abc",
        "name": "get_weather",
    }
    assert messages[2]["name"] == "given"
    assert "name" not in messages[3]


def test_mistral_ids_become_nine_alphanumerics_consistently() -> None:
    messages = to_template_messages(
        [ChatMessage("assistant", tool_calls=(CALL,)), ChatMessage("tool", "sunny", tool_call_id="call_abc")],
        syntax=ToolSyntax.MISTRAL,
    )
    new_id = messages[0]["tool_calls"][0]["id"]
    assert len(new_id) == 9 and new_id.isalnum()
    assert messages[1]["tool_call_id"] == new_id
    kept = to_template_messages(
        [ChatMessage("tool", "r", tool_call_id="a1B2c3D4e")], syntax=ToolSyntax.MISTRAL
    )
    assert kept[0]["tool_call_id"] == "a1B2c3D4e"
    # other syntaxes keep the client's ids
    assert (
        to_template_messages([ChatMessage("tool", "r", tool_call_id="call_abc")])[0]["tool_call_id"]
        == "call_abc"
    )


def test_images_are_refused() -> None:
    with pytest.raises(RequestError) as info:
        to_template_messages([ChatMessage("user", "look", parts=(ContentPart("image", url="http://x"),))])
    assert info.value.param == "messages"


def test_tools_in_template_shape() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert to_template_tools([Tool("get_weather", "Weather now", params), Tool("ping")]) == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather now", "parameters": params},
        },
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}},
        },
    ]
