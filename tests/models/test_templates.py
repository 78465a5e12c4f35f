"""Spec tests for llmhost.models.templates: built-in formats, resolution order, sandboxing, errors."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost.errors import RequestError
from llmhost.models.templates import BUILTIN_TEMPLATES, ChatTemplate, resolve_chat_template

GEMMA = resolve_chat_template("gemma3", None)
CHATML = resolve_chat_template("llama", None)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message.role == 'user' %}[INST] {{ message.content }} [/INST]"
    "{% else %}{{ message.content }}{{ eos_token }}{% endif %}{% endfor %}"
)


def _msgs(*pairs: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in pairs]


def _template(source: str) -> ChatTemplate:
    return resolve_chat_template(None, None, override=source)


# --- Gemma built-in -----------------------------------------------------------------------------------------


def test_gemma_user_only() -> None:
    out = GEMMA.render(_msgs(("user", "Hello")), bos_token="<bos>")
    assert out == "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_default_bos_is_empty() -> None:
    out = GEMMA.render(_msgs(("user", "Hi")))
    assert out == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_system_is_prepended_to_first_user_turn() -> None:
    out = GEMMA.render(_msgs(("system", "Be brief."), ("user", "Hi")), bos_token="<bos>")
    assert out == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_multi_turn_maps_assistant_to_model() -> None:
    messages = _msgs(("system", "Sys"), ("user", "Q1"), ("assistant", "A1"), ("user", "Q2"))
    out = GEMMA.render(messages, bos_token="<bos>")
    assert out == (
        "<bos>"
        "<start_of_turn>user\nSys\n\nQ1<end_of_turn>\n"
        "<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_gemma_without_generation_prompt() -> None:
    out = GEMMA.render(_msgs(("user", "Q"), ("assistant", "A")), add_generation_prompt=False)
    assert out == "<start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"


def test_gemma_trims_content_and_treats_none_as_empty() -> None:
    messages = _msgs(("user", "  Q \n"), ("assistant", None), ("user", "R"))
    out = GEMMA.render(messages, add_generation_prompt=False)
    assert out == (
        "<start_of_turn>user\nQ<end_of_turn>\n"
        "<start_of_turn>model\n<end_of_turn>\n"
        "<start_of_turn>user\nR<end_of_turn>\n"
    )


def test_gemma_system_only_is_not_dropped() -> None:
    out = GEMMA.render(_msgs(("system", "Say hi.")))
    assert out == "<start_of_turn>user\nSay hi.<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    "messages",
    [
        _msgs(("user", "a"), ("user", "b")),
        _msgs(("assistant", "a")),
        _msgs(("system", "s"), ("assistant", "a")),
        _msgs(("user", "a"), ("assistant", "b"), ("assistant", "c")),
    ],
)
def test_gemma_roles_must_alternate(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(RequestError) as info:
        GEMMA.render(messages)
    assert info.value.param == "messages"
    assert str(info.value) == (
        "chat template error: Conversation roles must alternate user/assistant/user/assistant/..."
    )


def test_gemma_rejects_unsupported_roles() -> None:
    with pytest.raises(RequestError) as info:
        GEMMA.render(_msgs(("user", "a"), ("system", "late system")))
    assert info.value.param == "messages"
    assert "'system' role" in str(info.value)


# --- ChatML built-in ----------------------------------------------------------------------------------------


def test_chatml_rendering() -> None:
    messages = _msgs(("system", "S"), ("user", "U"), ("assistant", None))
    out = CHATML.render(messages, add_generation_prompt=False)
    assert out == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
    )


def test_chatml_generation_prompt() -> None:
    out = CHATML.render(_msgs(("user", "U")))
    assert out == "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


# --- resolution ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gemma", "gemma2", "gemma3", "gemma3n", "Gemma3"])
def test_gemma_architectures_use_gemma_builtin(arch: str) -> None:
    template = resolve_chat_template(arch, None)
    assert template.origin == "builtin:gemma"
    assert template.source == BUILTIN_TEMPLATES["gemma"]
    assert template.stop == ("<end_of_turn>", "<start_of_turn>")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "", None])
def test_other_architectures_fall_back_to_chatml(arch: str | None) -> None:
    template = resolve_chat_template(arch, None)
    assert template.origin == "builtin:chatml"
    assert template.source == BUILTIN_TEMPLATES["chatml"]
    assert template.stop == ("<|im_end|>", "<|im_start|>")


def test_model_template_wins_over_builtin() -> None:
    template = resolve_chat_template("gemma3", LLAMA3_TEMPLATE)
    assert template.origin == "model"
    assert template.source == LLAMA3_TEMPLATE


def test_override_wins_over_model_and_builtin() -> None:
    template = resolve_chat_template("gemma3", LLAMA3_TEMPLATE, override=MISTRAL_TEMPLATE)
    assert template.origin == "override"
    assert template.source == MISTRAL_TEMPLATE


def test_blank_templates_count_as_absent() -> None:
    assert resolve_chat_template("gemma3", "  ", override="").origin == "builtin:gemma"
    assert resolve_chat_template("gemma3", LLAMA3_TEMPLATE, override="\n").origin == "model"


def test_builtin_templates_mapping() -> None:
    assert set(BUILTIN_TEMPLATES) == {"gemma", "chatml"}
    with pytest.raises(TypeError):
        BUILTIN_TEMPLATES["x"] = "y"  # type: ignore[index]


# --- stop strings -------------------------------------------------------------------------------------------


def test_stop_strings_guessed_for_model_templates() -> None:
    assert resolve_chat_template("llama", LLAMA3_TEMPLATE).stop == ("<|eot_id|>",)
    assert resolve_chat_template("qwen2", "{{ '<|im_end|>' }}").stop == ("<|im_end|>",)
    assert resolve_chat_template("phi3", "{{ '<|end|>' }}").stop == ("<|end|>",)
    assert resolve_chat_template("gemma3", "{{ '<end_of_turn>' }}").stop == ("<end_of_turn>",)


def test_eos_placeholder_is_not_a_literal_stop() -> None:
    # Mistral-style templates emit eos_token; "</s>" is only reported when it appears literally.
    assert resolve_chat_template("llama", MISTRAL_TEMPLATE).stop == ()
    assert resolve_chat_template("llama", "{{ '</s>' }}").stop == ("</s>",)


def test_stop_strings_guessed_for_override() -> None:
    template = resolve_chat_template("gemma3", None, override=LLAMA3_TEMPLATE)
    assert template.stop == ("<|eot_id|>",)


def test_stop_tuple_is_not_confused_by_longer_tokens() -> None:
    assert resolve_chat_template("x", "{{ '<|endoftext|>' }}").stop == ()


# --- model templates ----------------------------------------------------------------------------------------


def test_llama3_style_model_template_renders() -> None:
    template = resolve_chat_template("llama", LLAMA3_TEMPLATE)
    out = template.render(_msgs(("system", "S"), ("user", " U ")), bos_token="<|begin_of_text|>")
    assert out == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_model_template_uses_eos_token_and_attribute_access() -> None:
    template = resolve_chat_template("llama", MISTRAL_TEMPLATE)
    messages = _msgs(("user", "Q"), ("assistant", "A"), ("user", "R"))
    out = template.render(messages, bos_token="<s>", eos_token="</s>")
    assert out == "<s>[INST] Q [/INST]A</s>[INST] R [/INST]"


def test_none_content_renders_empty_in_model_templates() -> None:
    template = _template("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert template.render(_msgs(("assistant", None))) == "[]"


def test_caller_messages_are_not_mutated() -> None:
    messages = _msgs(("assistant", None))
    GEMMA.render(_msgs(("user", "q")) + messages, add_generation_prompt=False)
    assert messages == [{"role": "assistant", "content": None}]


def test_tools_tojson_and_strftime_now() -> None:
    source = (
        "{% if tools %}{% for t in tools %}{{ t | tojson }}|{{ t | tojson(indent=2) }}{% endfor %}{% endif %}"
        "|{{ strftime_now('%Y') | length }}|{{ tools is none }}"
    )
    tools = [{"name": "météo", "n": 1}]
    out = _template(source).render([], tools=tools)
    assert out == '{"name": "météo", "n": 1}|{\n  "name": "météo",\n  "n": 1\n}|4|False'
    assert _template("{{ tools is none }}").render([]) == "True"


def test_trim_and_lstrip_blocks() -> None:
    source = "{% for m in messages %}\n    {% if m.role %}\n{{ m.role }};\n    {% endif %}\n{% endfor %}"
    assert _template(source).render(_msgs(("user", "x"), ("assistant", "y"))) == "user;\nassistant;\n"


def test_loop_controls_and_generation_block_are_supported() -> None:
    source = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    )
    assert _template(source).render(_msgs(("system", "S"), ("user", "U"))) == "U"


def test_namespace_state_is_allowed() -> None:
    source = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
    )
    assert _template(source).render(_msgs(("user", "a"), ("assistant", "b"))) == "2"


# --- errors and sandbox -------------------------------------------------------------------------------------


def test_raise_exception_becomes_request_error() -> None:
    with pytest.raises(RequestError) as info:
        _template("{{ raise_exception('System role not supported') }}").render(_msgs(("user", "x")))
    assert info.value.param == "messages"
    assert str(info.value) == "chat template error: System role not supported"


@pytest.mark.parametrize(
    "source", ["{% for m in messages %}", "{{ messages | no_such_filter }}", "{{ 1 + }}"]
)
def test_syntax_error_becomes_request_error(source: str) -> None:
    template = _template(source)  # resolution does not compile; the error surfaces when rendering
    with pytest.raises(RequestError) as info:
        template.render(_msgs(("user", "x")))
    assert info.value.param == "messages"
    assert str(info.value).startswith("chat template error: syntax error")


def test_runtime_error_becomes_request_error() -> None:
    with pytest.raises(RequestError) as info:
        _template("{{ messages[0]['role'] + 1 }}").render(_msgs(("user", "x")))
    assert info.value.param == "messages"
    assert str(info.value).startswith("chat template error: ")


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ self._TemplateReference__context }}",
        "{{ messages[0].items.__self__ }}",
    ],
)
def test_sandbox_blocks_attribute_escapes(source: str) -> None:
    with pytest.raises(RequestError) as info:
        _template(source).render(_msgs(("user", "x")))
    assert info.value.param == "messages"
    assert "unsafe" in str(info.value)


@pytest.mark.parametrize(
    "source",
    [
        "{% set xs = [] %}{{ xs.append(1) }}{{ xs }}",
        "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
        "{{ messages[0].update({'content': 'pwned'}) }}",
        "{{ messages.pop() }}",
    ],
)
def test_sandbox_blocks_mutation(source: str) -> None:
    messages = _msgs(("user", "x"))
    with pytest.raises(RequestError) as info:
        _template(source).render(messages)
    assert info.value.param == "messages"
    assert "unsafe" in str(info.value)
    assert messages == [{"role": "user", "content": "x"}]


def test_error_is_chained_to_the_jinja_exception() -> None:
    with pytest.raises(RequestError) as info:
        _template("{{ ''.__class__ }}").render([])
    assert info.value.__cause__ is not None


def test_compiled_templates_are_cached() -> None:
    from llmhost.models import templates

    templates._compile.cache_clear()
    for _ in range(3):
        GEMMA.render(_msgs(("user", "x")))
    info = templates._compile.cache_info()
    assert info.misses == 1
    assert info.hits == 2


# --- tools --------------------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOL_SECTION = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather now", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
CALL_BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _call(city: str = "Paris", call_id: str = "call_1") -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": city}},
    }


def _tool_round() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [_call(), _call("Oslo", "call_2")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
    ]


def test_gemma_lists_tools_in_the_first_user_turn() -> None:
    out = GEMMA.render(
        _msgs(("system", "Be brief."), ("user", "Hi")), tools=[WEATHER_TOOL], bos_token="<bos>"
    )
    assert out == (
        f"<bos><start_of_turn>user\nBe brief.\n\n{TOOL_SECTION}\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )
    no_system = GEMMA.render(_msgs(("user", "Hi")), tools=[WEATHER_TOOL])
    assert no_system == f"<start_of_turn>user\n{TOOL_SECTION}\n\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_gemma_writes_calls_in_the_model_turn_and_folds_results_into_one_user_turn() -> None:
    out = GEMMA.render(_tool_round())
    oslo = CALL_BLOCK.replace("Paris", "Oslo")
    assert out == (
        "<start_of_turn>user\nWeather?<end_of_turn>\n"
        f"<start_of_turn>model\n{CALL_BLOCK}\n{oslo}<end_of_turn>\n"
        "<start_of_turn>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_gemma_keeps_an_assistants_text_before_its_calls() -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [_call()]},
    ]
    out = GEMMA.render(messages, add_generation_prompt=False)
    assert out.endswith(f"<start_of_turn>model\nChecking.\n{CALL_BLOCK}<end_of_turn>\n")


def test_gemma_folds_a_user_message_after_tool_results_into_their_turn() -> None:
    messages = [*_tool_round(), {"role": "user", "content": "And tomorrow?"}]
    out = GEMMA.render(messages)
    assert out.endswith("rain\n</tool_response>\n\nAnd tomorrow?<end_of_turn>\n<start_of_turn>model\n")
    then = [
        *_tool_round(),
        {"role": "assistant", "content": "Sunny in Paris."},
        {"role": "user", "content": "Thanks"},
    ]
    assert GEMMA.render(then).endswith(
        "<start_of_turn>model\nSunny in Paris.<end_of_turn>\n<start_of_turn>user\nThanks<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "tool", "content": "r"}],
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}],
    ],
)
def test_gemma_tool_results_must_follow_a_model_turn(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(RequestError, match="must alternate"):
        GEMMA.render(messages)


def test_chatml_writes_tools_like_qwen() -> None:
    out = CHATML.render([{"role": "system", "content": "S"}, *_tool_round()], tools=[WEATHER_TOOL])
    oslo = CALL_BLOCK.replace("Paris", "Oslo")
    assert out == (
        f"<|im_start|>system\nS\n\n{TOOL_SECTION}<|im_end|>\n"
        "<|im_start|>user\nWeather?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_BLOCK}\n{oslo}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    without_system = CHATML.render(_msgs(("user", "Q")), tools=[WEATHER_TOOL])
    assert without_system.startswith(f"<|im_start|>system\n{TOOL_SECTION}<|im_end|>\n<|im_start|>user\nQ")


def test_chatml_keeps_an_assistants_text_before_its_calls() -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [_call()]},
    ]
    assert CHATML.render(messages, add_generation_prompt=False).endswith(
        f"<|im_start|>assistant\nChecking.\n{CALL_BLOCK}<|im_end|>\n"
    )


def test_an_empty_tool_list_is_no_tools() -> None:
    assert CHATML.render(_msgs(("user", "Q")), tools=[]) == CHATML.render(_msgs(("user", "Q")))
    assert _template("{{ tools is none }}").render([], tools=[]) == "True"


def test_builtin_templates_handle_every_tool_feature_themselves() -> None:
    for template in (GEMMA, CHATML):
        caps = template.caps
        assert caps.tools and caps.tool_calls and caps.tool_results and caps.system


# A user/assistant-only template with no idea of tools: the fallbacks spell tool use out in its messages.
STRICT_CHATML = (
    "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unsupported role ' + m.role) }}{% endif %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_probing_finds_what_a_template_cannot_do() -> None:
    caps = _template(STRICT_CHATML).caps
    assert (caps.tools, caps.tool_calls, caps.tool_results, caps.system) == (False, False, False, True)
    no_system = _template(
        "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
    )
    assert not no_system.caps.system


def test_fallbacks_render_tool_use_the_way_the_builtin_chatml_does() -> None:
    messages = [{"role": "system", "content": "S"}, *_tool_round()]
    fallback = _template(STRICT_CHATML).render(messages, tools=[WEATHER_TOOL])
    assert fallback == CHATML.render(messages, tools=[WEATHER_TOOL])


def test_fallback_folds_results_and_a_following_user_message_into_one_user_message() -> None:
    messages = [*_tool_round(), {"role": "user", "content": "More?"}]
    out = _template(STRICT_CHATML).render(messages)
    assert out.endswith(
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        "\n\nMore?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_fallback_puts_tools_in_the_first_user_message_when_there_is_no_system_role() -> None:
    source = (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}"
        "[{{ m.role }}]{{ m.content }}{% endfor %}"
    )
    out = _template(source).render(_msgs(("user", "Hi")), tools=[WEATHER_TOOL])
    assert out == f"[user]{TOOL_SECTION}\n\nHi"


def test_a_template_with_native_tool_support_is_left_alone() -> None:
    source = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='function') | map(attribute='name') | join(',') }};"
        "{% endif %}"
        "{% for m in messages %}{% if m.tool_calls %}CALLS:{{ m.tool_calls[0].function.name }}"
        "{{ m.tool_calls[0].function.arguments | tojson }};"
        "{% elif m.role == 'tool' %}RESULT({{ m.tool_call_id }}):{{ m.content }};"
        "{% else %}{{ m.role }}:{{ m.content }};{% endif %}{% endfor %}"
    )
    out = _template(source).render(_tool_round()[:3], tools=[WEATHER_TOOL])
    assert out == 'TOOLS:get_weather;user:Weather?;CALLS:get_weather{"city": "Paris"};RESULT(call_1):sunny;'


def test_tool_rendering_does_not_mutate_the_callers_messages() -> None:
    messages = _tool_round()
    before = [dict(m) for m in messages]
    _template(STRICT_CHATML).render(messages, tools=[WEATHER_TOOL])
    GEMMA.render(messages, tools=[WEATHER_TOOL])
    assert messages == before
