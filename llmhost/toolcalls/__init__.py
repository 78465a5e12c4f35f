"""Tool calling for local models: checks, prompts, grammars and parsing, over the core types.

The local provider uses it in five steps::

    from llmhost.toolcalls import (
        ToolCallParser, detect_syntax, permitted_tools, to_template_messages, to_template_tools,
        tool_grammar, validate_tools,
    )

    validate_tools(req.tools, req.tool_choice)                       # RequestError -> 400
    syntax = detect_syntax(model.template.source, model.architecture, model.name)
    prompt = model.template.render(
        to_template_messages(req.messages, syntax=syntax),
        tools=to_template_tools(req.tools) or None, bos_token=..., eos_token=...,
    )
    tg = tool_grammar(req.tools, req.tool_choice, req.parallel_tool_calls, syntax)
    params = SamplingParams(..., grammar=tg.grammar if tg else None,
                            grammar_lazy=bool(tg and tg.lazy), grammar_triggers=tg.triggers if tg else ())
    parser = ToolCallParser(syntax, permitted_tools(req.tools, req.tool_choice),
                            parallel=req.parallel_tool_calls)
    for out in engine_outputs:                                       # each text delta
        for event in parser.feed(out.text):
            yield Delta(i, event) if isinstance(event, str) else Delta(i, tool_calls=(event,))
        if parser.done:
            break                                                    # one call read, parallel off
    ... the same for parser.finish(); finish_reason "tool_calls" if parser.parsed_calls

With ``tool_choice`` ``none`` pass the text through without a parser (``tool_grammar`` returns None).
``required`` or a named tool gives a grammar the whole output must follow: one call (or, with
``parallel_tool_calls``, several) of a permitted tool whose arguments match its schema -- on any model,
base models included. ``auto`` gives a lazy grammar that takes hold once the model starts a call.

Modules: :mod:`.syntax` (the Hermes / Llama 3 / Mistral call formats and their detection),
:mod:`.schema` (request checks), :mod:`.grammar` (GBNF), :mod:`.parse` (the streaming parser),
:mod:`.render` (core types -> chat-template dicts); the templates themselves are in
:mod:`llmhost.models.templates`.
"""

from llmhost.toolcalls.grammar import (
    ToolGrammar,
    forced_call_grammar,
    grammar_parses,
    json_schema_grammar,
    lazy_call_grammar,
    permitted_tools,
    tool_grammar,
)
from llmhost.toolcalls.parse import ParsedEvent, ToolCallParser, parse_all
from llmhost.toolcalls.render import to_template_messages, to_template_tools
from llmhost.toolcalls.schema import validate_tools
from llmhost.toolcalls.syntax import ToolSyntax, detect_syntax, new_call_id

__all__ = [
    "ParsedEvent",
    "ToolCallParser",
    "ToolGrammar",
    "ToolSyntax",
    "detect_syntax",
    "forced_call_grammar",
    "grammar_parses",
    "json_schema_grammar",
    "lazy_call_grammar",
    "new_call_id",
    "parse_all",
    "permitted_tools",
    "to_template_messages",
    "to_template_tools",
    "tool_grammar",
    "validate_tools",
]
