"""The Go-template subset ``/api/generate``'s ``template`` is rendered with."""

from __future__ import annotations

import pytest

from llmhost.doors.ollama.template import render_go_template
from llmhost.errors import RequestError


def render(source: str, system: str = "", prompt: str = "P") -> str:
    return render_go_template(source, system=system, prompt=prompt)


def test_fields_are_replaced_by_the_system_message_and_the_prompt() -> None:
    assert render("[{{ .System }}|{{ .Prompt }}]", system="S") == "[S|P]"


def test_if_else_chooses_by_whether_a_field_is_set() -> None:
    source = "{{ if .System }}sys:{{ .System }}{{ else if .Prompt }}no-sys{{ else }}none{{ end }}"
    assert render(source, system="S") == "sys:S"
    assert render(source) == "no-sys"
    assert render(source, prompt="") == "none"


def test_everything_after_the_response_is_cut_as_ollama_cuts_it() -> None:
    source = "<u>{{ .Prompt }}</u><a>{{ .Response }}</a><u>{{ .Prompt }}</u>"
    assert render(source) == "<u>P</u><a>"


def test_a_response_inside_an_if_block_cuts_the_rest_of_the_block_too() -> None:
    source = "{{ if .Prompt }}<u>{{ .Prompt }}</u>{{ .Response }}<end>{{ else }}x{{ end }}tail"
    assert render(source) == "<u>P</u>"


def test_trim_markers_eat_the_whitespace_beside_them() -> None:
    assert render("a  \n {{- .Prompt -}} \n  b") == "aPb"
    assert render("a {{ .Prompt }} b") == "a P b"


def test_comments_render_nothing() -> None:
    assert render("{{/* a comment */}}{{ .Prompt }}") == "P"


@pytest.mark.parametrize(
    "source",
    [
        "{{ range .Messages }}{{ .Content }}{{ end }}",
        "{{ .Unknown }}",
        "{{ if and .System .Prompt }}x{{ end }}",
        "{{ if .System }}never closed",
        "{{ end }}",
        "{{ .Prompt",
        "{{ if .System }}{{ else }}{{ else }}{{ end }}",
    ],
)
def test_what_the_subset_does_not_cover_is_a_400_on_template(source: str) -> None:
    with pytest.raises(RequestError) as err:
        render(source)
    assert err.value.param == "template"
