"""``llmhost`` — serve, run, chat, list, show and import models.

Every failure the user can cause prints one line (``error: ...``) and exits non-zero.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from llmhost.cli.common import ConfigOpt, console, err_console
from llmhost.cli.common import errors as _errors
from llmhost.cli.common import fail as _fail
from llmhost.cli.common import human_size as _human_size
from llmhost.cli.common import new_service as _service
from llmhost.cli.common import settings_for as _settings
from llmhost.cli.common import with_service as _with_service
from llmhost.core.types import ChatMessage, Delta, InferenceRequest, RequestContext, Sampling, Speculative
from llmhost.errors import ModelNotFoundError
from llmhost.logs import configure_logging
from llmhost.models.default import DEFAULT_MODEL_NAME
from llmhost.net import is_loopback
from llmhost.security.auth import OWNER

if TYPE_CHECKING:
    from llmhost.service import Service

__all__ = ["app", "main"]

app = typer.Typer(
    name="llmhost",
    help="Run and serve language models locally, behind an OpenAI-compatible API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _human_params(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8080).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model to load at start.")] = None,
    no_model: Annotated[
        bool, typer.Option("--no-model", help="Load no local model: a gateway to the configured providers.")
    ] = False,
    access_log: Annotated[
        bool | None, typer.Option("--access-log/--no-access-log", help="One log line per request.")
    ] = None,
    drain_seconds: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=86_400,
            help=(
                "Seconds running requests get to finish after SIGTERM/SIGINT (default 30); "
                "a second signal exits at once."
            ),
        ),
    ] = None,
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help=(
                "Deploy on Ray Serve: model replicas, each in its own process, behind this server's HTTP "
                "app (a local Ray cluster, or [ray] address / RAY_ADDRESS)."
            ),
        ),
    ] = False,
    replicas: Annotated[
        int | None, typer.Option(min=1, help="With --ray: model replicas at start (default 1).")
    ] = None,
    max_replicas: Annotated[
        int | None,
        typer.Option(min=1, help="With --ray: autoscale on queue depth up to this many replicas."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Start the OpenAI-compatible HTTP server; SIGTERM or Ctrl-C drains it, then it exits 0."""
    if no_model and model:
        _fail("give either --model or --no-model, not both")
    if (replicas is not None or max_replicas is not None) and not on_ray:
        _fail("--replicas and --max-replicas need --ray")
    settings = _settings(
        config,
        host=host,
        port=port,
        default_model="" if no_model else model,
        access_log=access_log,
        drain_seconds=drain_seconds,
    )
    import uvicorn

    from llmhost.doors.http.app import create_app
    from llmhost.doors.http.drain import DrainingServer

    with _errors():
        service = _service(settings)
        if not is_loopback(settings.host) and not service.auth.usable:
            service.close()
            _fail(
                f"refusing to bind {settings.host} without an API key: create one with "
                "`llmhost keys create NAME`, set LLMHOST_API_KEY, or bind 127.0.0.1"
            )
        # After the refusals: a server that does not start leaves the process's logging as it was.
        configure_logging(settings.log_level, settings.log_format)
        # Import the default model before listening, so a broken install fails here, loudly.
        service.prepare_default_model()
        what = f"[bold]{settings.default_model}[/bold]" if settings.default_model else "no local model"
        if on_ray:
            service.close()
            try:
                from llmhost.scale.ray_serve import SettingsSource, ray_settings_of, serve_on_ray
            except ModuleNotFoundError as exc:
                if (exc.name or "").partition(".")[0] != "ray":
                    raise
                _fail("--ray needs Ray Serve: pip install 'ray[serve]'")
            overrides = {"host": host, "port": port, "access_log": access_log, "drain_seconds": drain_seconds}
            source = SettingsSource.resolve(config, default_model="" if no_model else model, **overrides)
            scaling = ray_settings_of(settings, replicas=replicas, max_replicas=max_replicas)
            count = f"{scaling.replicas}-{scaling.max_replicas}" if scaling.autoscales else scaling.replicas
            serve_on_ray(
                source,
                scaling,
                on_ready=lambda url: console.print(
                    f"llmhost serving {what} on {url} (Ray Serve replicas: {count})"
                ),
            )
            return
        console.print(f"llmhost serving {what} on http://{settings.host}:{settings.port}")
        http_app = create_app(settings, service)
        server = DrainingServer(
            uvicorn.Config(
                http_app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=settings.access_log,
                # JSON: uvicorn's loggers hand their records to the root's JSON handler, not to their own.
                log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
            ),
            http_app.state.drain,
        )
        try:
            server.run()
        finally:
            service.close()
    if server.forced_by is not None:
        raise typer.Exit(128 + server.forced_by)


SpeculativeOpt = Annotated[
    Speculative | None,
    typer.Option(
        "--speculative",
        help="Speculative decoding on a local model: ngram (the same output) or none (default: the model's).",
    ),
]


def _sampling(
    max_tokens: int | None, temperature: float | None, seed: int | None, speculative: Speculative | None
) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed, speculative=speculative)


def _cli_context() -> RequestContext:
    return RequestContext(principal=OWNER, door="cli")


async def _print_answer(deltas: AsyncIterator[Delta]) -> str:
    """Stream an answer's text to the terminal; return it whole."""
    parts: list[str] = []
    async for delta in deltas:
        if delta.text:
            parts.append(delta.text)
            sys.stdout.write(delta.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(parts)


def _ensure_model(service: Any, name: str) -> None:
    if name in service.settings.routes:
        return
    if name == DEFAULT_MODEL_NAME and service.registry.find(name) is None:
        err_console.print(f"importing the embedded default model {name} ...")
        from llmhost.models.default import ensure_default_model

        ensure_default_model(service.store, service.registry, name)
    if service.registry.find(name) is None:
        raise ModelNotFoundError(name)


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model or route name, e.g. gemma3:270m.")],
    prompt: Annotated[str, typer.Argument(help="The prompt; its answer streams to the terminal.")],
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Most tokens to generate.")] = 256,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Sampling temperature (default: the model's).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed for reproducible output.")] = None,
    speculative: SpeculativeOpt = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Generate an answer to one prompt, streaming tokens as they come (through the same pipeline as
    the HTTP API: routes, per-model defaults and usage rows apply)."""
    settings = _settings(config)
    sampling = _sampling(max_tokens, temperature, seed, speculative)

    def go(service: Service) -> None:
        _ensure_model(service, model)

        async def main() -> None:
            await service.startup(preload=False)
            if raw:
                request = InferenceRequest("completion", model, prompt=prompt, sampling=sampling)
            else:
                message = ChatMessage("user", prompt)
                request = InferenceRequest("chat", model, messages=(message,), sampling=sampling)
            try:
                await _print_answer(await service.pipeline.stream(_cli_context(), request))
            finally:
                await service.aclose()

        asyncio.run(main())

    _with_service(settings, go)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Model or route name, e.g. gemma3:270m.")],
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Most tokens per answer.")] = 512,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Sampling temperature (default: the model's).")
    ] = None,
    speculative: SpeculativeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Chat interactively; /bye or Ctrl-D ends the session."""
    settings = _settings(config)
    sampling = _sampling(max_tokens, temperature, None, speculative)

    def go(service: Service) -> None:
        _ensure_model(service, model)
        history: list[ChatMessage] = [ChatMessage("system", system)] if system else []

        async def main() -> None:
            await service.startup(preload=False)
            if service.registry.find(model) is not None:
                await asyncio.to_thread(service.models.load, model)
            console.print(f"[dim]chatting with {model}; /bye to quit[/dim]")
            try:
                while True:
                    try:
                        line = await asyncio.to_thread(input, ">>> ")
                    except EOFError:
                        console.print()
                        return
                    if line.strip() in {"/bye", "/exit", "/quit"}:
                        return
                    if not line.strip():
                        continue
                    history.append(ChatMessage("user", line))
                    request = InferenceRequest("chat", model, messages=tuple(history), sampling=sampling)
                    answer = await _print_answer(await service.pipeline.stream(_cli_context(), request))
                    history.append(ChatMessage("assistant", answer))
            finally:
                await service.aclose()

        asyncio.run(main())

    _with_service(settings, go)


@app.command("list")
def list_models(config: ConfigOpt = None) -> None:
    """List the models in the local store."""
    settings = _settings(config)
    records = _with_service(settings, lambda s: s.list_models())
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "ID", "SIZE", "ARCH", "QUANT", "MODIFIED"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.name,
            r.digest.removeprefix("sha256:")[:12],
            _human_size(r.size_bytes),
            r.architecture,
            r.quantization,
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command()
def show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    template: Annotated[bool, typer.Option("--template", help="Print only the chat template.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Show a model's architecture, size, quantization, context, template and license."""
    settings = _settings(config)
    from llmhost.models.templates import resolve_chat_template

    record = _with_service(settings, lambda s: s.get_model(model))
    ms = settings.model_settings(model)
    tmpl = resolve_chat_template(record.architecture, record.chat_template, ms.chat_template)
    if template:
        sys.stdout.write(tmpl.source.rstrip("\n") + "\n")
        return
    rows = [
        ("name", record.name),
        ("architecture", record.architecture),
        ("parameters", _human_params(record.parameter_count)),
        ("quantization", record.quantization),
        ("context length", str(record.context_length or "unknown")),
        ("size", _human_size(record.size_bytes)),
        ("digest", record.digest),
        ("template", tmpl.origin),
        ("license", record.license or "unknown"),
        ("source", record.source),
        ("path", str(record.path)),
    ]
    eng = settings.engine
    keep_alive = ms.keep_alive if ms.keep_alive is not None else settings.memory.keep_alive
    gpu_layers = ms.n_gpu_layers if ms.n_gpu_layers is not None else eng.n_gpu_layers
    rows += [
        ("slots x context", f"{ms.n_parallel or eng.n_parallel} x {ms.n_ctx or eng.n_ctx} tokens"),
        ("threads", str(ms.n_threads or eng.n_threads or "auto")),
        ("gpu layers", "auto" if gpu_layers is None else str(gpu_layers)),
        ("keep alive", "forever" if keep_alive < 0 else f"{keep_alive:.0f}s"),
    ]
    defaults = ms.sampling_defaults()
    if defaults:
        rows.append(("sampling", ", ".join(f"{k}={v}" for k, v in defaults.items())))
    if ms.speculative == "ngram":
        rows.append(("speculative", f"ngram, draft_max={ms.resolved_draft_max}"))
    width = max(len(key) for key, _ in rows) + 2
    sys.stdout.write("".join(f"{key:<{width}}{value}\n" for key, value in rows))


@app.command()
def ps(config: ConfigOpt = None) -> None:
    """Show the models loaded in the running server: memory, slots busy, idle time."""
    import httpx

    settings = _settings(config)
    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    url = f"http://{host}:{settings.port}/api/ps"
    from llmhost.cli.model_commands import server_headers

    try:
        resp = httpx.get(url, headers=server_headers(settings), timeout=5)
    except httpx.HTTPError:
        _fail(f"no llmhost server answers at http://{host}:{settings.port} (start one with `llmhost serve`)")
        return
    if resp.status_code != 200:
        _fail(f"server answered {resp.status_code}: {resp.text[:200]}")
    table = Table(box=None, pad_edge=False)
    for col in ("NAME", "ID", "SIZE", "PROCESSOR", "SLOTS", "CONTEXT", "IDLE", "UNTIL"):
        table.add_column(col, no_wrap=True)
    for m in resp.json()["models"]:
        until = (
            "forever"
            if m["keep_alive"] < 0
            else ("busy" if m["slots_busy"] or m["waiting"] else str(m["expires_at"])[11:19])
        )
        table.add_row(
            m["name"],
            m["digest"].removeprefix("sha256:")[:12],
            _human_size(m["size"]),
            "GPU" if m["size_vram"] else "CPU",
            f"{m['slots_busy']}/{m['slots']} (+{m['waiting']} waiting)",
            str(m["context_length"]),
            f"{m['idle_seconds']:.0f}s",
            until,
        )
    console.print(table, soft_wrap=True)


_MAX_USAGE_DAYS = 36_500.0  # a century, as /api/usage allows


@app.command()
def usage(
    by: Annotated[str, typer.Option(help="Group by model, provider, target, key, door or day.")] = "model",
    days: Annotated[float | None, typer.Option(help="Only the last N days.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Summarise requests, tokens and cost from the usage log."""
    if by not in {"model", "provider", "target", "key", "door", "day"}:
        _fail("--by must be one of model, provider, target, key, door, day", 2)
    # ``not <=``: NaN fails every comparison, so it is refused too (the HTTP route takes the same range).
    if days is not None and not 0.0 <= days <= _MAX_USAGE_DAYS:
        _fail(f"--days must be between 0 and {_MAX_USAGE_DAYS:g}", 2)
    settings = _settings(config)
    from llmhost.router.cost import UsageStore, since_days

    with _errors():
        store = UsageStore(settings.database_for("llmhost.db"))
        try:
            rows = store.summary(by, since_days(days) if days is not None else None)  # type: ignore[arg-type]
        finally:
            store.close()
    table = Table(box=None, pad_edge=False)
    for col in (by.upper(), "REQUESTS", "OK", "PROMPT", "COMPLETION", "CACHED", "COST", "AVG MS"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(
            str(r[by]),
            str(r["requests"]),
            str(r["ok"]),
            str(r["prompt_tokens"]),
            str(r["completion_tokens"]),
            str(r["cached_tokens"]),
            f"{r['cost']:.6f}",
            f"{r['avg_latency_ms']:.0f}",
        )
    console.print(table, soft_wrap=True)


@app.command("import")
def import_model(
    path: Annotated[
        Path, typer.Argument(help="A local GGUF file, or a Hugging Face BERT-family folder to convert.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Name to register it under.")],
    config: ConfigOpt = None,
) -> None:
    """Validate a local GGUF file, copy it into the store and register it.

    A Hugging Face folder (config.json, model.safetensors, tokenizer.json) of a BERT embedding model,
    such as a sentence-transformers download, is converted to GGUF first (no torch needed).
    """
    settings = _settings(config)
    if path.is_dir():
        record = _with_service(settings, lambda s: s.store.import_hf_folder(path, name))
    else:
        record = _with_service(settings, lambda s: s.store.import_file(path, name))
    console.print(
        f"imported {record.name} ({_human_size(record.size_bytes)}, {record.digest})", highlight=False
    )


@app.command()
def bench(
    url: Annotated[str, typer.Option(help="Server root URL (any OpenAI API).")] = "http://127.0.0.1:8080",
    model: Annotated[str, typer.Option("--model", "-m", help="Model name to request.")] = DEFAULT_MODEL_NAME,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
    requests: Annotated[int, typer.Option(min=1, help="Requests in all.")] = 16,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per request.")] = 128,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Approximate prompt length in tokens.")] = 64,
    endpoint: Annotated[str, typer.Option(help="completions or chat.")] = "completions",
    api_key: Annotated[str | None, typer.Option(help="Bearer key, if the server needs one.")] = None,
) -> None:
    """Load-test a running OpenAI-compatible server with streamed requests (starts no server)."""
    from llmhost.bench import BenchResult, make_prompts, run_load

    if endpoint not in ("completions", "chat"):
        _fail("--endpoint must be 'completions' or 'chat'", 2)
    try:
        result = asyncio.run(
            run_load(
                url,
                model,
                concurrency=concurrency,
                requests=requests,
                prompt=make_prompts(requests, prompt_tokens),
                max_tokens=max_tokens,
                api_key=api_key,
                endpoint="chat" if endpoint == "chat" else "completions",
            )
        )
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    console.print(BenchResult.header(), markup=False, highlight=False, soft_wrap=True)
    console.print(
        result.to_row(f"c={concurrency} n={requests}", url), markup=False, highlight=False, soft_wrap=True
    )
    for sample in result.error_samples:
        err_console.print(f"error sample: {sample}", markup=False, highlight=False, soft_wrap=True)
    if result.n_ok == 0:
        _fail(f"no request succeeded against {url}")


def _register_commands() -> None:
    from llmhost.cli import (
        agent_commands,
        audit_commands,
        dataset_commands,
        diagnose_commands,
        doctor,
        key_commands,
        mcp_commands,
        model_commands,
    )

    model_commands.register(app)
    doctor.register(app)
    key_commands.register(app)
    audit_commands.register(app)
    mcp_commands.register(app)
    diagnose_commands.register(app)
    agent_commands.register(app)
    dataset_commands.register(app)


_register_commands()


def main() -> None:
    app()
