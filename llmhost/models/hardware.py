"""What this machine offers llama.cpp: CPU, RAM (inside any cgroup limit), NVIDIA GPUs, and the build.

:func:`detect_hardware` never raises: whatever cannot be read is replaced by a fallback or explained in
a field (``gpu_error``). It reads

- the CPU from ``/proc/cpuinfo`` (model, physical cores, SIMD flags) with :mod:`platform` fallbacks;
- RAM from ``/proc/meminfo`` (``MemTotal``, ``MemAvailable``); a cgroup memory limit (v2 ``memory.max``
  or v1 ``memory.limit_in_bytes`` of this process's cgroup and its ancestors) wins when it is lower;
- CPU limits from ``sched_getaffinity`` and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_*``);
- NVIDIA GPUs from NVML (``nvidia-ml-py``, import name ``pynvml``) when a driver answers;
- the llama.cpp build: ``llama_supports_gpu_offload()`` and ``llama_print_system_info()``.

The result is cached: the first call does the work, later ones return the same object. Pass ``nvml``
(any object with pynvml's functions) to detect with a different NVML, uncached.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CgroupLimits",
    "GPUInfo",
    "HardwareInfo",
    "clear_hardware_cache",
    "detect_hardware",
    "read_cgroup_limits",
]

# Flags llama.cpp's CPU backend cares about, as /proc/cpuinfo spells them (x86 "flags", Arm "Features").
_X86_FEATURES = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
)  # fmt: skip
_ARM_FEATURES = ("neon", "dotprod", "i8mm", "fp16", "sve", "sve2", "sme")
# /proc/cpuinfo names -> llama.cpp's names.
_RENAMES = {"pni": "sse3", "asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16"}
# cgroup v1 reports "no limit" as a huge page-aligned number (2**63 - 4096 on x86-64).
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class GPUInfo:
    """One NVIDIA GPU as NVML reports it."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    driver: str | None
    compute_capability: str | None  # "9.0" for an H100


@dataclass(frozen=True)
class CgroupLimits:
    """The limits of this process's cgroup (the lowest along its ancestors); None where there is none."""

    version: int | None = None  # 1 or 2, None when no cgroup file was found
    memory_limit_bytes: int | None = None
    memory_usage_bytes: int | None = None
    cpu_quota: float | None = None  # CPUs' worth of time per period, e.g. 1.5


@dataclass(frozen=True)
class HardwareInfo:
    """What llmhost found on this machine, and the defaults it derives from it."""

    cpu_model: str
    physical_cores: int
    logical_cpus: int
    cpu_features: tuple[str, ...]  # e.g. ("avx", "avx2", "fma", "f16c"); ("neon", ...) on Arm
    total_ram_bytes: int  # the cgroup limit when it is lower than MemTotal
    available_ram_bytes: int  # MemAvailable, capped by what the cgroup limit leaves
    gpus: tuple[GPUInfo, ...]
    gpu_error: str | None  # why ``gpus`` is empty (no pynvml, no driver, no device), else None
    llama_gpu_offload: bool  # llama_cpp.llama_supports_gpu_offload()
    llama_system_info: str  # llama_cpp.llama_print_system_info(), e.g. "CPU : SSE3 = 1 | AVX2 = 1 | ..."
    usable_cpus: int = 0  # CPUs this process may run on (sched_getaffinity); 0 = unknown
    cpu_quota: float | None = None  # cgroup CPU quota in CPUs, None = no quota
    cgroup_memory_limit_bytes: int | None = None
    host_total_ram_bytes: int = 0  # MemTotal, whatever the cgroup says
    nvml_available: bool = False  # an NVIDIA driver answered NVML

    @property
    def default_threads(self) -> int:
        """Physical cores, fewer when CPU affinity or a cgroup CPU quota allows fewer.

        llama.cpp gains nothing from SMT siblings, and threads beyond a CPU quota get throttled in the
        middle of its synchronised matrix work, which is slower than using fewer threads.
        """
        threads = self.physical_cores
        if self.usable_cpus > 0:
            threads = min(threads, self.usable_cpus)
        if self.cpu_quota is not None:
            threads = min(threads, int(self.cpu_quota))
        return max(1, threads)

    @property
    def default_gpu_layers(self) -> int:
        """-1 (every layer) when llama.cpp can offload and there is a GPU to offload to, else 0.

        In this llama.cpp, ``llama_supports_gpu_offload()`` is true only when a GPU backend registered a
        device (CUDA, Metal, Vulkan, ROCm). NVML sees NVIDIA GPUs only, so when NVML did not answer the
        GPU llama.cpp found is taken at its word (Apple silicon, AMD); when NVML answered with no GPU
        but llama.cpp still offers offload (e.g. RPC only), nothing is offloaded.
        """
        if not self.llama_gpu_offload:
            return 0
        return -1 if self.gpus or not self.nvml_available else 0


# ----- cgroups ------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def _own_and_ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """``mount/cgroup_path`` and each parent up to ``mount``, deepest first, those that exist."""
    parts = [p for p in cgroup_path.strip("/").split("/") if p and p not in (".", "..")]
    dirs = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _v1_mount(cgroup_root: Path, controller: str) -> Path | None:
    """The v1 hierarchy mounted for ``controller`` (``memory``, or ``cpu`` in ``cpu,cpuacct``)."""
    direct = cgroup_root / controller
    if direct.is_dir():
        return direct
    try:
        entries = sorted(cgroup_root.iterdir())
    except OSError:
        return None
    for entry in entries:
        if controller in entry.name.split(",") and entry.is_dir():
            return entry
    return None


def _parse_cpu_max(text: str | None) -> float | None:
    """v2 ``cpu.max``: ``"max 100000"`` (no quota) or ``"150000 100000"`` (1.5 CPUs)."""
    if not text:
        return None
    fields = text.split()
    try:
        if fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1]) if len(fields) > 1 else 100_000
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _lowest(values: Iterable[int | float | None]) -> Any:
    found = [v for v in values if v is not None]
    return min(found) if found else None


def read_cgroup_limits(root: Path | str = "/") -> CgroupLimits:
    """Memory and CPU limits of this process's cgroup, read from files under ``root``.

    ``root`` is ``/`` on a real system; tests point it at a directory holding ``proc/self/cgroup`` and
    ``sys/fs/cgroup/...``. Both cgroup v2 (unified, also the hybrid ``unified/`` mount) and v1
    hierarchies are read; a limit anywhere up the tree applies, so the lowest one wins.
    """
    root = Path(root)
    text = _read_text(root / "proc/self/cgroup")
    if text is None:
        return CgroupLimits()
    cgroup_root = root / "sys/fs/cgroup"
    v2_path: str | None = None
    v1_paths: dict[str, str] = {}
    for line in text.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            v2_path = path
        else:
            for name in controllers.split(","):
                v1_paths.setdefault(name, path)

    mem_limits: list[int | None] = []
    usage: int | None = None
    quotas: list[float | None] = []
    version: int | None = None

    if v2_path is not None:
        mount = cgroup_root if (cgroup_root / "cgroup.controllers").is_file() else cgroup_root / "unified"
        dirs = _own_and_ancestors(mount, v2_path)
        if any((d / "memory.max").is_file() or (d / "cpu.max").is_file() for d in dirs):
            version = 2
        for d in dirs:
            raw = _read_text(d / "memory.max")
            if raw and raw != "max":
                mem_limits.append(_read_int(d / "memory.max"))
            quotas.append(_parse_cpu_max(_read_text(d / "cpu.max")))
        usage = _lowest(_read_int(d / "memory.current") for d in dirs[:1])

    if "memory" in v1_paths:
        mount_v1 = _v1_mount(cgroup_root, "memory")
        dirs = _own_and_ancestors(mount_v1, v1_paths["memory"]) if mount_v1 else []
        if dirs:
            version = version or 1
        for d in dirs:
            limit = _read_int(d / "memory.limit_in_bytes")
            if limit is not None and 0 < limit < _UNLIMITED:
                mem_limits.append(limit)
        if usage is None and dirs:
            usage = _read_int(dirs[0] / "memory.usage_in_bytes")
    if "cpu" in v1_paths:
        mount_v1 = _v1_mount(cgroup_root, "cpu")
        for d in _own_and_ancestors(mount_v1, v1_paths["cpu"]) if mount_v1 else []:
            quota, period = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
            if quota is not None and period and quota > 0:
                quotas.append(quota / period)

    return CgroupLimits(
        version=version,
        memory_limit_bytes=_lowest(mem_limits),
        memory_usage_bytes=usage,
        cpu_quota=_lowest(quotas),
    )


# ----- CPU and RAM --------------------------------------------------------------------------------------


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _cpu_features(flags: Iterable[str]) -> tuple[str, ...]:
    have = {_RENAMES.get(flag, flag) for flag in flags}
    return tuple(f for f in (*_X86_FEATURES, *_ARM_FEATURES) if f in have)


def _sysfs_physical_cores(root: Path) -> int | None:
    """Distinct core sibling sets from sysfs topology (Arm's /proc/cpuinfo has no ``core id``)."""
    seen: set[str] = set()
    for cpu in (root / "sys/devices/system/cpu").glob("cpu[0-9]*"):
        siblings = _read_text(cpu / "topology/core_cpus_list") or _read_text(
            cpu / "topology/thread_siblings_list"
        )
        if siblings:
            seen.add(siblings)
    return len(seen) or None


def _read_cpu(root: Path, logical: int) -> tuple[str, int, tuple[str, ...]]:
    """(model, physical cores, features) from /proc/cpuinfo, with platform fallbacks."""
    model = ""
    physical: int | None = None
    features: tuple[str, ...] = ()
    text = _read_text(root / "proc/cpuinfo")
    if text:
        blocks = _cpuinfo_blocks(text)
        for block in blocks:
            model = model or block.get("model name") or block.get("hardware") or block.get("cpu model", "")
        pairs = {(b.get("physical id", "0"), b["core id"]) for b in blocks if "core id" in b}
        physical = len(pairs) or None
        flags = next(
            (b.get("flags") or b.get("features") for b in blocks if "flags" in b or "features" in b), ""
        )
        features = _cpu_features((flags or "").split())
    physical = physical or _sysfs_physical_cores(root)
    machine = platform.machine().lower()
    if not features and machine in ("arm64", "aarch64"):
        features = ("neon",)  # every 64-bit Arm CPU has Advanced SIMD (Apple silicon included)
    model = model or platform.processor() or machine or "unknown"
    return model, max(1, min(physical or logical, logical)), features


def _meminfo(root: Path) -> tuple[int | None, int | None]:
    text = _read_text(root / "proc/meminfo")
    if not text:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if match:
            values[match.group(1)] = int(match.group(2)) * 1024
    total = values.get("MemTotal")
    available = values.get("MemAvailable", values.get("MemFree"))
    return total, available


def _sysconf_ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0
    try:
        available = page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError):
        available = total
    return total, available


# ----- GPUs and llama.cpp -------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _nvml_gpus(nvml: Any | None) -> tuple[tuple[GPUInfo, ...], str | None, bool]:
    """(GPUs, why there are none, whether a driver answered) from NVML."""
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            return (), "nvidia-ml-py (pynvml) is not installed, so NVIDIA GPUs cannot be listed", False
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return (), f"no NVIDIA driver answered (NVML: {_text(exc) or type(exc).__name__})", False
    gpus: list[GPUInfo] = []
    error: str | None = None
    try:
        try:
            driver: str | None = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability: str | None = f"{int(major)}.{int(minor)}"
            except Exception:
                capability = None
            gpus.append(
                GPUInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    total_bytes=int(memory.total),
                    free_bytes=int(memory.free),
                    driver=driver,
                    compute_capability=capability,
                )
            )
        if not gpus:
            error = "the NVIDIA driver answered but reports no GPU"
    except Exception as exc:
        error = f"NVML query failed: {_text(exc) or type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return tuple(gpus), error, True


def _llama_build() -> tuple[bool, str]:
    try:
        # Imported here: a broken native build must not stop `llmhost doctor` from reporting the rest.
        import llama_cpp

        from llmhost.native import gpu_offload_supported

        offload = gpu_offload_supported()
        raw = llama_cpp.llama_print_system_info()
        info = _text(raw).strip().rstrip("|").strip()
        return offload, info
    except Exception as exc:  # a broken native build must not stop `llmhost doctor`
        return False, f"unavailable ({type(exc).__name__}: {exc})"


# ----- detection ----------------------------------------------------------------------------------------


def _usable_cpus(logical: int) -> int:
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return logical
    try:
        return len(getaffinity(0)) or logical
    except OSError:
        return logical


def _detect(nvml: Any | None, root: Path) -> HardwareInfo:
    logical = max(1, os.cpu_count() or 1)
    try:
        cpu_model, physical, features = _read_cpu(root, logical)
    except Exception:
        cpu_model, physical, features = platform.machine() or "unknown", logical, ()
    try:
        limits = read_cgroup_limits(root) if sys.platform.startswith("linux") else CgroupLimits()
    except Exception:
        limits = CgroupLimits()
    try:
        host_total, available = _meminfo(root)
    except Exception:
        host_total = available = None
    if host_total is None or available is None:
        fallback_total, fallback_available = _sysconf_ram()
        host_total = host_total or fallback_total
        available = available if available is not None else fallback_available
    total = host_total
    limit = limits.memory_limit_bytes
    if limit is not None and (total == 0 or limit < total):
        total = limit
        left = limit - limits.memory_usage_bytes if limits.memory_usage_bytes is not None else limit
        available = min(available, max(0, left)) if available else max(0, left)
    gpus, gpu_error, nvml_ok = _nvml_gpus(nvml)
    offload, system_info = _llama_build()
    return HardwareInfo(
        cpu_model=cpu_model,
        physical_cores=physical,
        logical_cpus=logical,
        cpu_features=features,
        total_ram_bytes=total,
        available_ram_bytes=available,
        gpus=gpus,
        gpu_error=gpu_error,
        llama_gpu_offload=offload,
        llama_system_info=system_info,
        usable_cpus=_usable_cpus(logical),
        cpu_quota=limits.cpu_quota,
        cgroup_memory_limit_bytes=limit,
        host_total_ram_bytes=host_total,
        nvml_available=nvml_ok,
    )


@functools.lru_cache(maxsize=1)
def _detect_cached() -> HardwareInfo:
    return _detect(None, Path("/"))


def detect_hardware(*, nvml: Any | None = None, root: Path | str | None = None) -> HardwareInfo:
    """Detect CPU, RAM, GPUs and the llama.cpp build; never raises (problems land in fields).

    ``nvml`` replaces the ``pynvml`` module and ``root`` the file system root that ``/proc`` and
    ``/sys`` are read under (tests pass fakes); calls with either are not cached.
    """
    if nvml is not None or root is not None:
        return _detect(nvml, Path(root) if root is not None else Path("/"))
    return _detect_cached()


def clear_hardware_cache() -> None:
    """Forget the cached detection, so the next :func:`detect_hardware` looks again (e.g. free RAM)."""
    _detect_cached.cache_clear()
