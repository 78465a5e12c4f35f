"""What every CLI command shares: the consoles, the ``--config`` option, one-line errors, settings and
a short-lived service.

Every failure the user can cause prints one line (``error: ...``) and exits non-zero: 2 for a bad
configuration, 130 for Ctrl-C, 1 for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from llmhost.config import Settings, load_settings
from llmhost.errors import ConfigError, LLMHostError

if TYPE_CHECKING:
    from llmhost.service import Service

__all__ = [
    "ConfigOpt",
    "console",
    "err_console",
    "errors",
    "fail",
    "human_size",
    "new_service",
    "settings_for",
    "with_service",
]

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (default: $LLMHOST_CONFIG).")
]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    try:
        yield
    except ConfigError as exc:
        fail(str(exc).replace("\n", "; "), 2)
    except LLMHostError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print()
        raise typer.Exit(130) from None


def settings_for(config: Path | None, **overrides: Any) -> Settings:
    with errors():
        return load_settings(config, **overrides)
    raise AssertionError("unreachable")


def new_service(settings: Settings) -> Service:
    # Imported here: the service pulls in llama.cpp and the web stack, which `llmhost --help`,
    # `keys` and `audit` never need (a second off every start).
    from llmhost.service import Service

    return Service(settings)


def with_service(settings: Settings, fn: Callable[[Any], T]) -> T:
    with errors():
        service = new_service(settings)
        try:
            return fn(service)
        finally:
            service.close()
    raise AssertionError("unreachable")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
