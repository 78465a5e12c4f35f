"""``llmhost doctor``: what this machine has, and what llmhost will do with it.

It reports the CPU, RAM (and any cgroup limit), NVIDIA GPUs (or why none were found), the llama.cpp
build, then the threads and GPU layers llmhost will use and how many slots x tokens of the default model
fit in memory, from :func:`llmhost.models.memory.estimate_memory`. It changes nothing: the model
registry is only read, and only when it already exists.

``register(app)`` adds the command; ``llmhost.cli.main`` helpers are imported inside functions, since
``main`` imports this module.
"""

# No ``from __future__ import annotations``: typer reads these annotations at run time.

from pathlib import Path
from typing import Annotated

import typer

from llmhost.cli.common import settings_for
from llmhost.config import Settings
from llmhost.models.hardware import HardwareInfo, detect_hardware

__all__ = ["CUDA_BUILD_COMMAND", "doctor_report", "register"]

CUDA_BUILD_COMMAND = (
    'CMAKE_ARGS="-DGGML_CUDA=on" .venv/bin/pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python==0.3.36"
)
BUDGET_FRACTION = 0.9  # of free RAM/VRAM; the rest is left for the OS, Python and other processes
_WIDTH = 17


def _size(n: int | float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _row(key: str, value: str) -> str:
    return f"  {key:<{_WIDTH}}{value}"


def _hardware_lines(hw: HardwareInfo) -> list[str]:
    usable = f", {hw.usable_cpus} usable" if hw.usable_cpus and hw.usable_cpus != hw.logical_cpus else ""
    ram = f"{_size(hw.total_ram_bytes)} total, {_size(hw.available_ram_bytes)} available"
    if hw.cgroup_memory_limit_bytes is not None:
        cgroup = f"{_size(hw.cgroup_memory_limit_bytes)} (host has {_size(hw.host_total_ram_bytes)})"
    else:
        cgroup = "none"
    lines = [
        "Hardware",
        _row("CPU", hw.cpu_model),
        _row("cores", f"{hw.physical_cores} physical, {hw.logical_cpus} logical{usable}"),
        _row("CPU quota", f"{hw.cpu_quota:g} CPUs (cgroup)" if hw.cpu_quota is not None else "none"),
        _row("CPU features", " ".join(hw.cpu_features) or "none detected"),
        _row("RAM", ram),
        _row("cgroup limit", cgroup),
    ]
    if hw.gpus:
        for gpu in hw.gpus:
            extra = [f"compute {gpu.compute_capability}"] if gpu.compute_capability else []
            extra += [f"driver {gpu.driver}"] if gpu.driver else []
            detail = f" ({', '.join(extra)})" if extra else ""
            vram = f"{_size(gpu.total_bytes)} VRAM, {_size(gpu.free_bytes)} free"
            lines.append(_row(f"GPU {gpu.index}", f"{gpu.name}, {vram}{detail}"))
    else:
        lines.append(_row("GPUs", f"none ({hw.gpu_error or 'none found'})"))
    lines.append(_row("llama.cpp build", hw.llama_system_info or "unknown"))
    offload = "yes" if hw.llama_gpu_offload else "no (this build runs on the CPU only)"
    lines.append(_row("GPU offload", offload))
    return lines


def _model_lines(settings: Settings, hw: HardwareInfo, on_gpu: bool) -> list[str]:
    from llmhost.errors import LLMHostError
    from llmhost.models.gguf_check import inspect_gguf
    from llmhost.models.memory import estimate_memory, max_ctx_per_slot, max_slots

    name = settings.default_model
    if not name:
        return [_row("default model", 'none (default_model = "": the server loads no local model)')]
    missing = [
        _row("default model", f"{name} is not imported yet (`llmhost serve` imports the embedded one)")
    ]
    missing.append(_row("", "so there is no memory estimate"))
    if settings.database_url is None and not settings.database_path.is_file():
        return missing
    try:
        from llmhost.models.registry import Registry

        with Registry(settings.database_for("llmhost.db")) as registry:
            record = registry.find(name)
        if record is None:
            return missing
        info = inspect_gguf(record.path)
    except LLMHostError as exc:
        return [_row("default model", f"{name}: cannot read it ({exc})")]

    engine = settings.engine
    if on_gpu:
        free = sum(gpu.free_bytes for gpu in hw.gpus)
        budget = int(free * BUDGET_FRACTION)
        where = f"VRAM: {_size(budget)} ({BUDGET_FRACTION:.0%} of {_size(free)} free)"
        # On a GPU, llama.cpp's logits reservation (n_batch rows unless the context caps it) is real.
        n_outputs: int | None = engine.n_batch
    else:
        budget = int(hw.available_ram_bytes * BUDGET_FRACTION)
        where = f"RAM: {_size(budget)} ({BUDGET_FRACTION:.0%} of {_size(hw.available_ram_bytes)} available)"
        n_outputs = None
    est = estimate_memory(
        info,
        n_ctx_total=engine.n_ctx * engine.n_parallel,
        n_seq=engine.n_parallel,
        n_batch=engine.n_batch,
        n_outputs=n_outputs,
    )
    verdict = "fits" if est.total_bytes <= budget else "DOES NOT FIT"
    configured = (
        f"{engine.n_parallel} slots x {engine.n_ctx} tokens: ~{_size(est.total_bytes)} "
        f"(weights {_size(est.weights_bytes)}, KV cache {_size(est.kv_cache_bytes)}, "
        f"compute {_size(est.compute_bytes)}): {verdict}"
    )
    slots = max_slots(
        info, budget_bytes=budget, n_ctx_slot=engine.n_ctx, n_batch=engine.n_batch, n_outputs=n_outputs
    )
    ctx = max_ctx_per_slot(
        info, budget_bytes=budget, n_seq=engine.n_parallel, n_batch=engine.n_batch, n_outputs=n_outputs
    )
    trained = ""
    if info.context_length:
        trained = (
            " (its trained maximum)" if ctx >= info.context_length else f" (trained: {info.context_length})"
        )
    most = (
        f"{slots}{'+' if slots >= 256 else ''} slots x {engine.n_ctx} tokens, "
        f"or {engine.n_parallel} slots x {ctx} tokens{trained}"
    )
    return [
        _row("default model", f"{name} ({info.architecture}, {info.quantization}, {_size(info.size_bytes)})"),
        _row("memory budget", where),
        _row("configured", configured),
        _row("at most", most),
    ]


def doctor_report(settings: Settings, hw: HardwareInfo) -> str:
    """The text ``llmhost doctor`` prints for ``settings`` on hardware ``hw``."""
    engine = settings.engine
    lines = _hardware_lines(hw)
    lines += ["", "llmhost will use"]
    if engine.n_threads is not None:
        lines.append(_row("threads", f"{engine.n_threads} (engine.n_threads)"))
    else:
        lines.append(_row("threads", f"{hw.default_threads} (physical cores, within CPU affinity and quota)"))
    layers = engine.n_gpu_layers if engine.n_gpu_layers is not None else hw.default_gpu_layers
    layer_text = "all" if layers < 0 else str(layers)
    why = "engine.n_gpu_layers" if engine.n_gpu_layers is not None else "default"
    if engine.n_gpu_layers is None and not hw.llama_gpu_offload:
        why = "the llama.cpp build cannot offload"
    elif engine.n_gpu_layers is None and layers == 0:
        why = "no GPU to offload to"
    lines.append(_row("GPU layers", f"{layer_text} ({why})"))
    on_gpu = hw.llama_gpu_offload and layers != 0 and bool(hw.gpus)
    lines += _model_lines(settings, hw, on_gpu)
    if hw.gpus and not hw.llama_gpu_offload:
        lines += [
            "",
            "An NVIDIA GPU is present but this llama-cpp-python build is CPU-only. For a CUDA build run:",
            f"  {CUDA_BUILD_COMMAND}",
        ]
    return "\n".join(lines) + "\n"


ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML settings file (default: $LLMHOST_CONFIG).")
]


def register(app: typer.Typer) -> None:
    """Add ``llmhost doctor`` to ``app``."""

    def doctor(config: ConfigOpt = None) -> None:
        """Show the CPU, RAM, GPUs and llama.cpp build found, and how llmhost will use them."""
        settings = settings_for(config)
        typer.echo(doctor_report(settings, detect_hardware()), nl=False)

    app.command("doctor")(doctor)
