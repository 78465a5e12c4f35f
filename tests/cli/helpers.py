"""What the in-process CLI tests share: the service behind a live server, an environment that points the
CLI at that server, and the check for a one-line error."""

from __future__ import annotations

from typer.testing import Result

from tests.conftest import LiveServer


def beside(live: LiveServer, env: dict[str, str], **extra: str) -> dict[str, str]:
    """``env`` pointed at ``live``: its data dir (the CLI's store and owner token are the server's) and
    its address."""
    data_dir = live.service.settings.data_dir
    return {
        **env,
        "LLMHOST_DATA_DIR": str(data_dir),
        "LLMHOST_HOST": "127.0.0.1",
        "LLMHOST_PORT": str(live.port),
        **extra,
    }


def one_error_line(result: Result, code: int = 1) -> str:
    """The command exited with ``code`` and wrote exactly one ``error: ...`` line on stderr; return it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]
