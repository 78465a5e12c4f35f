"""``llmhost pull``, ``rm`` and ``cp`` (plus the hidden aliases ``ls`` and ``remove``).

``register(app)`` adds them to the main typer app; the helpers every command shares are in
:mod:`llmhost.cli.common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmhost.cli.common import console, errors, fail, human_size, settings_for, with_service
from llmhost.errors import AuthError
from llmhost.security.auth import read_owner_token

if TYPE_CHECKING:
    from collections.abc import Callable

    from llmhost.config import Settings
    from llmhost.models.pull import PullProgress
    from llmhost.models.registry import ModelRecord

__all__ = ["loaded_model_names", "register", "server_headers"]

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (default: $LLMHOST_CONFIG).")
]

_PS_TIMEOUT_S = 1.0


def loaded_model_names(settings: Settings, timeout: float = _PS_TIMEOUT_S) -> set[str] | None:
    """Names the running server reports as loaded (``GET /api/ps``); ``None`` when no server answers."""
    entries = _loaded_models(settings, timeout)
    if entries is None:
        return None
    return {str(entry[key]) for entry in entries for key in ("name", "model") if entry.get(key)}


def _loaded_models(settings: Settings, timeout: float = _PS_TIMEOUT_S) -> list[dict[str, Any]] | None:
    """The running server's ``GET /api/ps`` entries; ``None`` when no server answers."""
    import httpx

    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::", ""} else settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        resp = httpx.get(
            f"http://{host}:{settings.port}/api/ps", headers=server_headers(settings), timeout=timeout
        )
    except httpx.HTTPError:
        return None
    if resp.status_code in (401, 403):
        raise AuthError(
            f"the server on port {settings.port} refused the CLI ({resp.status_code}), so what it has "
            "loaded is unknown (another data dir's server? set LLMHOST_API_KEY to a key with models:read)"
        )
    if resp.status_code != 200:
        return None
    try:
        models = resp.json().get("models", [])
    except (ValueError, AttributeError):
        return None
    return [entry for entry in models if isinstance(entry, dict)] if isinstance(models, list) else []


def server_headers(settings: Settings) -> dict[str, str]:
    """How the CLI authenticates to its own running server: the config-file key, else the owner token
    the server wrote into the data dir."""
    secret = settings.api_key.get_secret_value() if settings.api_key else read_owner_token(settings.data_dir)
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def _in_use_by_server(settings: Settings) -> Callable[[ModelRecord], bool] | None:
    """Whether the running server has a record's file loaded, from its ``/api/ps``; None if none answers.

    An entry with a digest is matched by digest (a name may have been re-pointed since it was loaded);
    one without is matched by name.
    """
    entries = _loaded_models(settings)
    if entries is None:
        return None
    # Ollama's /api/ps writes the bare hex; older llmhost servers wrote "sha256:<hex>".
    digests = {str(e["digest"]).removeprefix("sha256:") for e in entries if e.get("digest")}
    names = {str(e[key]) for e in entries if not e.get("digest") for key in ("name", "model") if e.get(key)}
    return lambda record: record.digest.removeprefix("sha256:") in digests or record.name in names


class _PullDisplay:
    """A rich progress bar on a terminal; nothing (but the final line) when stderr is not one."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _PullDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.progress.stop()

    def __call__(self, event: PullProgress) -> None:
        if event.status in ("downloading", "registering"):
            label = (
                f"pulling {event.detail}" if event.status == "downloading" and event.detail else event.status
            )
            task = self.tasks.get(event.status)
            if task is None:
                task = self.progress.add_task(label, total=event.total)
                self.tasks[event.status] = task
            self.progress.update(task, total=event.total, completed=event.completed or 0)


def register(app: typer.Typer) -> None:
    """Add ``pull``, ``rm``, ``cp`` (and hidden ``ls``/``remove`` aliases) to ``app``."""

    @app.command()
    def pull(
        spec: Annotated[
            str,
            typer.Argument(help="hf:ORG/REPO[:FILE.gguf|:QUANT] (Q4_K_M by default), or an https:// URL."),
        ],
        name: Annotated[
            str | None, typer.Option("--name", "-n", help="Name to register it under (default: derived).")
        ] = None,
        sha256: Annotated[
            str | None, typer.Option("--sha256", help="Expected SHA-256 (required for a plain URL).")
        ] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Download a GGUF model from Hugging Face (or a URL), verify it and register it.

        Honours HF_ENDPOINT and HF_TOKEN; an interrupted download resumes on the next pull.
        """
        from llmhost.models.pull import pull_model

        settings = settings_for(config)

        def go(service: Any) -> ModelRecord:
            with _PullDisplay() as display:
                return pull_model(service.store, spec, name=name, sha256=sha256, progress=display)

        record = with_service(settings, go)
        console.print(
            f"pulled {record.name} ({human_size(record.size_bytes)}, {record.digest})",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    @app.command()
    def rm(
        name: Annotated[str, typer.Argument(help="Model name to remove.")],
        config: ConfigOpt = None,
    ) -> None:
        """Remove a model from the store (refused while the running server has it loaded)."""

        settings = settings_for(config)
        with errors():
            loaded = loaded_model_names(settings)
        if loaded is not None and name in loaded:
            fail(f"model {name} is in use by the running server; unload it first (POST /api/unload)")
        record = with_service(settings, lambda s: s.store.remove(name))
        console.print(f"deleted {record.name}", highlight=False, markup=False, soft_wrap=True)

    @app.command("remove", hidden=True)
    def remove(name: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
        """Alias of rm."""
        rm(name, config)

    @app.command()
    def cp(
        source: Annotated[str, typer.Argument(help="Existing model name.")],
        destination: Annotated[str, typer.Argument(help="New name for the same model file.")],
        config: ConfigOpt = None,
    ) -> None:
        """Register another name for an existing model (no file is copied); re-points an existing name.

        The file the re-pointed name used is deleted when no name uses it any more, unless the running
        server has it loaded.
        """

        settings = settings_for(config)
        with errors():
            in_use = _in_use_by_server(settings)
        record = with_service(settings, lambda s: s.store.copy(source, destination, in_use=in_use))
        console.print(f"copied {source} to {record.name}", highlight=False, markup=False, soft_wrap=True)

    @app.command("ls", hidden=True)
    def ls(config: ConfigOpt = None) -> None:
        """Alias of list."""
        from llmhost.cli.main import list_models

        list_models(config)
