"""The ``llmhost`` command line, driven through its real entry point (``python -m llmhost``).

Every test runs the CLI as a subprocess with an isolated environment: its own data dir, its own
config dir, small engine settings, and the tiny random-weight llama model from ``tests.tiny_gguf``.
Most tests share one data dir with ``tiny`` already imported (module scope) to keep the file fast.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support import cli_env, free_port, sha256_of
from tests.tiny_gguf import truncate_copy, write_not_gguf

TINY = "tiny"
REPO_ROOT = Path(__file__).resolve().parents[2]


# Variables that would leak the developer's setup into the CLI, or change how Rich lays out output.
def llmhost(
    *args: str | Path, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m llmhost ARGS`` and capture its output (stdin is empty unless given)."""
    return subprocess.run(
        [sys.executable, "-m", "llmhost", *map(str, args)],
        env=env,
        cwd=REPO_ROOT,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def llmhost_concurrently(
    *calls: Sequence[str | Path], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run several independent ``llmhost`` invocations at once (start-up dominates their cost)."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda args: llmhost(*args, env=env), calls))


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """The CLI failed with exactly one ``error: ...`` line on stderr; return that line."""
    assert result.returncode != 0, result
    if code is not None:
        assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    return lines[0]


@dataclass
class Store:
    """A data dir with ``tiny`` imported through the CLI."""

    base: Path
    env: dict[str, str]
    digest: str
    import_result: subprocess.CompletedProcess[str]

    @property
    def blobs_dir(self) -> Path:
        return self.base / "data" / "models" / "blobs"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Store:
    base = tmp_path_factory.mktemp("cli")
    env = cli_env(base)
    result = llmhost("import", tiny_model_path, "--name", TINY, env=env)
    return Store(base=base, env=env, digest="sha256:" + sha256_of(tiny_model_path), import_result=result)


def _no_wrap(text: str) -> str:
    return "".join(text.split())


# ----- import, list, show ----------------------------------------------------------------------------
def test_import_then_list_and_show(store: Store) -> None:
    imported = store.import_result
    assert imported.returncode == 0, imported.stderr
    assert TINY in imported.stdout
    assert store.digest in _no_wrap(imported.stdout)

    listed = llmhost("list", env=store.env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.split()[:1] == [TINY])
    assert "llama" in row.split()
    assert "F32" in row.split()
    assert store.digest.removeprefix("sha256:")[:12] in row

    shown = llmhost("show", TINY, env=store.env)
    assert shown.returncode == 0, shown.stderr
    fields = {
        key.strip(): value.strip()
        for key, value in (line.split("  ", 1) for line in shown.stdout.splitlines() if "  " in line)
    }
    assert fields["name"] == TINY
    assert fields["architecture"] == "llama"
    assert fields["parameters"].endswith("K")  # ~116K random weights
    assert fields["quantization"] == "F32"
    assert fields["context length"] == "2048"
    assert fields["template"] == "builtin:chatml"
    assert fields["license"] == "unknown"

    template = llmhost("show", TINY, "--template", env=store.env)
    assert template.returncode == 0, template.stderr
    assert "<|im_start|>" in template.stdout
    assert "add_generation_prompt" in template.stdout


def test_list_of_an_empty_store_is_just_the_header(tmp_path: Path) -> None:
    result = llmhost("list", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines() if line.strip()] == [
        ["NAME", "ID", "SIZE", "ARCH", "QUANT", "MODIFIED"]
    ]


# ----- run and chat ----------------------------------------------------------------------------------
def test_run_streams_generated_text(store: Store) -> None:
    greedy, raw = llmhost_concurrently(
        ("run", TINY, "hello", "--max-tokens", "5", "--temperature", "0"),
        ("run", TINY, "hello", "--max-tokens", "5", "--temperature", "0", "--raw"),
        env=store.env,
    )
    assert greedy.returncode == 0, greedy.stderr
    assert greedy.stdout.strip()
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.strip()


def test_run_with_the_same_seed_repeats_itself_and_other_seeds_do_not(store: Store) -> None:
    """A seed fixes the sample, and the sample depends on it: three seeds, 16 tokens each at temperature
    2 over the tiny model's ~300-token vocabulary, agree only when the seed is ignored (else all three
    would have to draw the same tokens, or stop on the same first few, which is vanishingly unlikely)."""

    def args(seed: int) -> tuple[str, ...]:
        return ("run", TINY, "hello", "--max-tokens", "16", "--temperature", "2.0", "--seed", str(seed))

    first, second, *others = llmhost_concurrently(args(42), args(42), args(7), args(1234), env=store.env)
    for result in (first, second, *others):
        assert result.returncode == 0, result.stderr
    assert first.stdout.strip()
    assert first.stdout == second.stdout
    samples = {first.stdout, *(result.stdout for result in others)}
    assert len(samples) > 1, samples


def test_chat_reads_lines_until_bye(store: Store) -> None:
    result = llmhost("chat", TINY, "--max-tokens", "4", env=store.env, stdin="hi\n/bye\n")
    assert result.returncode == 0, result.stderr
    assert f"chatting with {TINY}" in result.stdout
    assert result.stdout.count(">>> ") == 2  # one answered turn, then the prompt that read /bye


def test_chat_ends_at_end_of_input(store: Store) -> None:
    result = llmhost("chat", TINY, "--max-tokens", "4", env=store.env, stdin="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(">>> ") == 1


# ----- user errors: one line on stderr, non-zero exit ------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [("run", "nope", "hello"), ("show", "nope"), ("chat", "nope")],
    ids=["run", "show", "chat"],
)
def test_unknown_model_is_one_line_error(store: Store, args: tuple[str, ...]) -> None:
    line = assert_one_line_error(llmhost(*args, env=store.env), code=1)
    assert "nope" in line
    assert "not found" in line


def test_failed_imports_leave_the_store_as_it_was(
    store: Store, tmp_path: Path, tiny_model_path: Path
) -> None:
    not_gguf = write_not_gguf(tmp_path / "random.gguf")
    truncated = truncate_copy(tiny_model_path, tmp_path / "truncated.gguf", 3000)
    blobs_before = sorted(p.name for p in store.blobs_dir.iterdir())

    line = assert_one_line_error(llmhost("import", not_gguf, "--name", "bad", env=store.env))
    assert "GGUF" in line
    line = assert_one_line_error(llmhost("import", truncated, "--name", "bad", env=store.env))
    assert "truncated" in line

    listed = llmhost("list", env=store.env)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()]
    assert names == [TINY]
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == blobs_before
    assert not [p for p in store.blobs_dir.iterdir() if p.name.endswith(".partial")]


def test_import_of_a_missing_file_is_one_line_error(store: Store, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    line = assert_one_line_error(llmhost("import", missing, "--name", "m", env=store.env))
    assert "not found" in line


def test_import_under_an_invalid_name_is_refused(store: Store, tiny_model_path: Path) -> None:
    line = assert_one_line_error(llmhost("import", tiny_model_path, "--name", "../x", env=store.env))
    assert "invalid model name" in line


# ----- configuration errors: exit 2 ------------------------------------------------------------------
def test_invalid_environment_setting_names_the_field(store: Store) -> None:
    env = {**store.env, "LLMHOST_PORT": "99999"}
    line = assert_one_line_error(llmhost("list", env=env), code=2)
    assert "port" in line


@pytest.mark.parametrize(
    ("toml", "expected"),
    [("bogus_key = 1\n", "bogus_key"), ("port = [\n", "invalid configuration")],
    ids=["unknown-key", "malformed"],
)
def test_invalid_config_file_exits_2(store: Store, tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "llmhost.toml"
    config.write_text(toml)
    line = assert_one_line_error(llmhost("list", "--config", config, env=store.env), code=2)
    assert expected in line


def test_missing_config_file_exits_2(store: Store, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = assert_one_line_error(llmhost("list", "--config", missing, env=store.env), code=2)
    assert "config file not found" in line


def test_serve_refuses_a_public_bind_without_an_api_key(store: Store) -> None:
    # Refused before anything listens: were it to start serving, the timeout would fail the test.
    result = llmhost("serve", "--host", "0.0.0.0", env=store.env, timeout=30)
    line = assert_one_line_error(result)
    assert "API key" in line or "LLMHOST_API_KEY" in line


def test_serve_refuses_both_a_model_and_no_model(store: Store) -> None:
    result = llmhost("serve", "--no-model", "--model", TINY, env=store.env, timeout=30)
    assert "either --model or --no-model" in assert_one_line_error(result)


# ----- usage -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [(("run", TINY), "Missing argument"), (("list", "--bogus"), "No such option")],
    ids=["missing-prompt", "unknown-option"],
)
def test_wrong_arguments_are_a_usage_error(store: Store, args: tuple[str, ...], message: str) -> None:
    result = llmhost(*args, env=store.env)
    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert message in result.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = llmhost("--help", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    words = set(result.stdout.replace("│", " ").split())
    assert {"serve", "run", "chat", "list", "show", "import"} <= words


# ----- serve -----------------------------------------------------------------------------------------
@pytest.fixture
def serve_process(store: Store, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**store.env, "LLMHOST_DEFAULT_MODEL": TINY}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmhost", "serve", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_answers_on_the_configured_port(
    serve_process: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    proc, base_url, log = serve_process
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"serve exited early ({proc.returncode}):\n{log.read_text()}"
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"serve never became ready:\n{log.read_text()}"
        time.sleep(0.1)

    response = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"

    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve did not exit within 10 s of SIGINT:\n{log.read_text()}")
    assert proc.returncode == 0, log.read_text()


# ----- output that scripts rely on -----------------------------------------------------------------
def test_error_messages_are_printed_verbatim(store: Store) -> None:
    names = ("x[/red]", "x[bold]y")
    results = llmhost_concurrently(*(("show", name) for name in names), env=store.env)
    for name, result in zip(names, results, strict=True):
        assert name in assert_one_line_error(result, code=1)


def test_show_template_prints_the_exact_template(store: Store) -> None:
    from llmhost.models.templates import resolve_chat_template

    expected = resolve_chat_template("llama", None).source
    result = llmhost("show", TINY, "--template", env=store.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected.rstrip("\n")


def test_import_and_show_print_the_full_digest_on_one_line(store: Store) -> None:
    assert store.digest in store.import_result.stdout
    shown = llmhost("show", TINY, env=store.env)
    assert any(store.digest in line for line in shown.stdout.splitlines())
