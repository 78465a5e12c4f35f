"""Where settings come from: a TOML file, then ``LLMHOST_*`` environment variables (``__`` nests), then
CLI flags, each layer over the one below; and per-model sampling defaults and speculative decoding
(``[models."X"]``) reaching the requests of a live server, where a value the request gives wins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import ValidationError
from typer.testing import CliRunner, Result

from llmhost.cli.main import app
from llmhost.config import (
    DEFAULT_DRAFT_MAX,
    ModelSettings,
    config_problems,
    default_config_path,
    load_settings,
)
from tests.conftest import TINY, ServerFactory
from tests.doors.test_speculative import drafted


@pytest.fixture(autouse=True)
def _no_llmhost_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the variables a test sets: none of the developer's ``LLMHOST_*`` (``LLMHOST_PORT`` ...)."""
    for name in [name for name in os.environ if name.startswith("LLMHOST_")]:
        monkeypatch.delenv(name)


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----- the layers, as load_settings (what every CLI command calls) builds them --------------------------
def test_flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each field comes from the highest layer that sets it; a flag the user did not give (None) is no
    layer at all, so it does not hide the environment."""
    toml = write_toml(tmp_path / "llmhost.toml", 'port = 1111\nhost = "192.0.2.1"\nlog_level = "debug"\n')
    data_dir = tmp_path / "data"
    monkeypatch.setenv("LLMHOST_PORT", "2222")
    monkeypatch.setenv("LLMHOST_LOG_LEVEL", "error")

    flagged = load_settings(toml, data_dir=data_dir, port=3333, host=None)
    assert (flagged.port, flagged.log_level, flagged.host) == (3333, "error", "192.0.2.1")
    assert flagged.access_log is True  # no layer sets it: the default
    unflagged = load_settings(toml, data_dir=data_dir, port=None)
    assert (unflagged.port, unflagged.log_level) == (2222, "error")

    monkeypatch.delenv("LLMHOST_PORT")
    monkeypatch.delenv("LLMHOST_LOG_LEVEL")
    from_file = load_settings(toml, data_dir=data_dir)
    assert (from_file.port, from_file.log_level, from_file.host) == (1111, "debug", "192.0.2.1")
    defaults = load_settings(None, data_dir=data_dir)
    assert (defaults.port, defaults.log_level, defaults.host) == (8080, "info", "127.0.0.1")


def test_double_underscores_reach_nested_fields_and_merge_with_the_files_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LLMHOST_ENGINE__N_PARALLEL`` sets one field of ``[engine]``, leaving the file's others; so do
    ``LLMHOST_MEMORY__…`` and ``LLMHOST_MODELS__<name>__…`` (a model table the file has, or a new one)."""
    toml = write_toml(
        tmp_path / "llmhost.toml",
        "[engine]\nn_ctx = 1024\nn_parallel = 5\n"
        '[memory]\nkeep_alive = "10m"\n'
        '[models."tiny"]\ntemperature = 0.5\ntop_k = 7\n',
    )
    monkeypatch.setenv("LLMHOST_ENGINE__N_PARALLEL", "3")
    monkeypatch.setenv("LLMHOST_MEMORY__MAX_LOADED", "2")
    monkeypatch.setenv("LLMHOST_MODELS__tiny__TOP_K", "9")
    monkeypatch.setenv("LLMHOST_MODELS__other__MIN_P", "0.1")
    monkeypatch.setenv("LLMHOST_ENGINE_N_BATCH", "64")  # one underscore: not a nested name, ignored

    settings = load_settings(toml, data_dir=tmp_path / "data")
    assert (settings.engine.n_ctx, settings.engine.n_parallel, settings.engine.n_batch) == (1024, 3, 512)
    assert (settings.memory.keep_alive, settings.memory.max_loaded) == (600.0, 2)
    assert settings.model_settings("tiny").sampling_defaults() == {"temperature": 0.5, "top_k": 9}
    assert settings.model_settings("other").sampling_defaults() == {"min_p": 0.1}
    assert settings.model_settings("unconfigured").sampling_defaults() == {}


def test_the_file_named_by_the_flag_beats_llmhost_config_which_beats_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--config`` > ``$LLMHOST_CONFIG`` > ``<config dir>/llmhost.toml`` (read only when it exists)."""
    data_dir = tmp_path / "data"
    assert load_settings(None, data_dir=data_dir).port == 8080  # no file anywhere
    assert default_config_path().is_relative_to(tmp_path.parent)  # the test's own config dir
    write_toml(default_config_path(), "port = 1111\n")
    assert load_settings(None, data_dir=data_dir).port == 1111
    monkeypatch.setenv("LLMHOST_CONFIG", str(write_toml(tmp_path / "env.toml", "port = 2222\n")))
    assert load_settings(None, data_dir=data_dir).port == 2222
    assert load_settings(write_toml(tmp_path / "flag.toml", "port = 3333\n"), data_dir=data_dir).port == 3333


# ----- per-model speculative decoding ----------------------------------------------------------------
def test_a_models_speculative_is_ngram_none_or_unset_and_its_draft_max_1_to_64() -> None:
    assert ModelSettings().speculative is None
    assert ModelSettings(speculative="ngram").speculative == "ngram"
    assert ModelSettings(speculative="none").speculative == "none"
    with pytest.raises(ValidationError, match="speculative"):
        ModelSettings(speculative="fast")  # type: ignore[arg-type]
    assert ModelSettings().resolved_draft_max == DEFAULT_DRAFT_MAX
    assert [ModelSettings(draft_max=n).resolved_draft_max for n in (1, 64)] == [1, 64]
    for n in (0, 65):
        with pytest.raises(ValidationError, match="draft_max"):
            ModelSettings(draft_max=n)
    # A TOML file with both wrong: one problem per key, by its path.
    text = f'[models."{TINY}"]\nspeculative = "fast"\ndraft_max = 0\n'
    assert [path for path, _ in config_problems(text)] == [
        f"models.{TINY}.speculative",
        f"models.{TINY}.draft_max",
    ]
    assert config_problems(f'[models."{TINY}"]\nspeculative = "ngram"\ndraft_max = 24\n') == []


# ----- the layers through the real CLI -----------------------------------------------------------------
def invoke(env: dict[str, str], *args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def test_serve_binds_the_flags_host_over_the_environments_over_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llmhost serve`` refuses a public address without a key before it listens, and names the address
    it would have bound: the ``--host`` flag's, else ``LLMHOST_HOST``'s, else the file's."""

    def no_serving(*args: Any, **kwargs: Any) -> None:  # a loopback host would get this far
        raise AssertionError("serve got past the refusal of a public bind")

    monkeypatch.setattr(uvicorn, "run", no_serving)
    toml = write_toml(tmp_path / "llmhost.toml", 'host = "192.0.2.1"\n')
    env = {"LLMHOST_DATA_DIR": str(tmp_path / "data"), "LLMHOST_CONFIG": str(toml), "COLUMNS": "200"}

    def refused_host(result: Result) -> str:
        assert result.exit_code == 1, (result.stdout, result.stderr)
        (line,) = [line for line in result.stderr.splitlines() if line.strip()]
        assert line.startswith("error: refusing to bind ") and "without an API key" in line, line
        return line.split()[4]

    with_env = {**env, "LLMHOST_HOST": "192.0.2.2"}
    assert refused_host(invoke(with_env, "serve", "--host", "192.0.2.3", "--no-model")) == "192.0.2.3"
    assert refused_host(invoke(with_env, "serve", "--no-model")) == "192.0.2.2"
    assert refused_host(invoke(env, "serve", "--no-model")) == "192.0.2.1"


def test_show_reports_settings_from_the_file_and_nested_environment_variables(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    """``llmhost show`` prints the settings a model will run with: ``[engine]`` from the file with one
    field from ``LLMHOST_ENGINE__…``, and the ``[models."tiny"]`` defaults with one from the environment
    (speculative decoding too)."""
    toml = write_toml(
        tmp_path / "llmhost.toml",
        '[engine]\nn_ctx = 1024\nn_parallel = 5\n[models."tiny"]\ntemperature = 0.5\ntop_k = 7\n'
        'speculative = "ngram"\n',
    )
    env = {
        "LLMHOST_DATA_DIR": str(tmp_path / "data"),
        "LLMHOST_CONFIG": str(toml),
        "LLMHOST_ENGINE__N_PARALLEL": "3",
        "LLMHOST_MODELS__tiny__TOP_K": "9",
        "LLMHOST_MODELS__tiny__DRAFT_MAX": "24",
        "COLUMNS": "200",
    }
    imported = invoke(env, "import", tiny_model_path, "--name", TINY)
    assert imported.exit_code == 0, imported.stderr
    shown = invoke(env, "show", TINY)
    assert shown.exit_code == 0, shown.stderr
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split("  ", 1) for line in shown.stdout.splitlines() if "  " in line)
    }
    assert fields["slots x context"] == "3 x 1024 tokens"
    assert fields["sampling"] == "temperature=0.5, top_k=9"
    assert fields["speculative"] == "ngram, draft_max=24"


# ----- per-model sampling defaults on a live server ---------------------------------------------------
PROMPT = "Once upon a time"
# Each default alone makes every draw the most likely token, whatever the seed: temperature 0 is greedy,
# top_k 1 keeps one token, min_p 1 keeps only the tokens as likely as the best. Each request override
# undoes it (with temperature 2 for the two that leave temperature alone).
DEFAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "temperature": ("temperature = 0.0", {"temperature": 2.0}),
    "top_k": ("top_k = 1", {"top_k": 0, "temperature": 2.0}),
    "min_p": ("min_p = 1.0", {"min_p": 0.0, "temperature": 2.0}),
}


@pytest.mark.parametrize("field", list(DEFAULTS))
def test_a_models_sampling_default_applies_unless_the_request_sets_it(
    field: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_server: ServerFactory,
) -> None:
    """The server's file (``$LLMHOST_CONFIG``) gives ``tiny`` a default that makes sampling greedy: three
    seeds that leave the field out all get the greedy answer; the same seeds setting the field undo it
    (12 tokens each from a near-uniform ~300-token vocabulary: they cannot all agree). A model without the
    default samples freely."""
    line, override = DEFAULTS[field]
    toml = write_toml(tmp_path / "llmhost.toml", f'[models."{TINY}"]\n{line}\n')
    monkeypatch.setenv("LLMHOST_CONFIG", str(toml))
    live = make_server()
    base = live.base_url

    def complete(model: str, seed: int, **sampling: Any) -> str:
        body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "seed": seed, "ignore_eos": True}
        r = httpx.post(f"{base}/v1/completions", json={**body, **sampling}, timeout=60)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        return str(choice["text"])

    greedy = complete(TINY, 0, temperature=0.0, top_k=0, min_p=0.0)
    seeds = (1, 2, 3)
    assert [complete(TINY, seed) for seed in seeds] == [greedy] * 3
    assert len({complete(TINY, seed, **override) for seed in seeds}) > 1

    copied = httpx.post(f"{base}/api/copy", json={"source": TINY, "destination": "plain"})
    assert copied.status_code == 200, copied.text
    # The same weights under another name have no default: OpenAI's (temperature 1) samples freely.
    assert len({complete("plain", seed) for seed in seeds}) > 1


def test_model_settings_from_the_environment_reach_the_loaded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: ServerFactory
) -> None:
    """``[models."tiny"]`` in the file and ``LLMHOST_MODELS__tiny__…`` together shape the model the
    server loads: its context (file) and its slots (environment), as ``/api/ps`` reports them."""
    toml = write_toml(tmp_path / "llmhost.toml", f'[models."{TINY}"]\nn_ctx = 256\n')
    monkeypatch.setenv("LLMHOST_CONFIG", str(toml))
    monkeypatch.setenv(f"LLMHOST_MODELS__{TINY}__N_PARALLEL", "2")
    live = make_server()
    (entry,) = httpx.get(f"{live.base_url}/api/ps").json()["models"]
    assert (entry["name"], entry["context_length"], entry["slots"]) == (TINY, 256, 2)


def test_a_models_speculative_ngram_drafts_for_its_requests_unless_one_says_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: ServerFactory
) -> None:
    """``speculative = "ngram"`` in the file turns drafting on for every request to ``tiny`` that does not
    say otherwise, with the answers of plain decoding; a request's ``"none"`` turns it off. ``/api/show``
    lists it among the model's parameters."""
    toml = write_toml(tmp_path / "llmhost.toml", f'[models."{TINY}"]\nspeculative = "ngram"\ndraft_max = 4\n')
    monkeypatch.setenv("LLMHOST_CONFIG", str(toml))
    live = make_server()

    def complete(**extra: Any) -> str:
        body = {"model": TINY, "prompt": "The cat sat on the mat. " * 6, "max_tokens": 24, "temperature": 0}
        r = httpx.post(
            f"{live.base_url}/v1/completions", json={**body, "ignore_eos": True, **extra}, timeout=60
        )
        assert r.status_code == 200, r.text
        return str(r.json()["choices"][0]["text"])

    off = complete(speculative="none")
    assert drafted(live) == 0
    assert complete() == off
    assert 0 < drafted(live) <= 24
    shown = httpx.post(f"{live.base_url}/api/show", json={"model": TINY}).json()
    assert 'speculative                    "ngram"' in shown["parameters"]
