"""Hardware detection: this machine for real, GPUs through a fake NVML, cgroups through fake files.

This machine has no GPU and no NVIDIA driver, so the GPU code paths run against ``FakeNVML``, a test
double with the few pynvml functions ``detect_hardware`` calls: it reports hardware that cannot exist
here (an H100), which is the only way to exercise those paths on this machine. Cgroup and /proc files
are written to a temporary directory that the parsers take as their root. ``llmhost doctor`` runs
through typer's CliRunner on an app built with ``llmhost.cli.doctor.register``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from llmhost.cli.doctor import CUDA_BUILD_COMMAND, doctor_report, register
from llmhost.models.hardware import (
    CgroupLimits,
    GPUInfo,
    HardwareInfo,
    clear_hardware_cache,
    detect_hardware,
    read_cgroup_limits,
)
from tests.conftest import make_service, make_settings

GiB = 1 << 30


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


class FakeNVML:
    """Test double for the pynvml module: one or more GPUs, or a failure at nvmlInit()."""

    def __init__(
        self,
        gpus: list[tuple[str | bytes, int, int]] | None = None,
        *,
        init_error: Exception | None = None,
        capability: tuple[int, int] = (9, 0),
    ) -> None:
        self.gpus = gpus or []
        self.init_error = init_error
        self.capability = capability
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.54.15"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.gpus[handle][0]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        _, total, free = self.gpus[handle]
        return SimpleNamespace(total=total, free=free, used=total - free)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.capability


H100 = ("NVIDIA H100 80GB HBM3", 80 * GiB, 79 * GiB)


# ----- this machine -------------------------------------------------------------------------------------


def test_detection_on_this_machine_is_sane() -> None:
    hw = detect_hardware()
    assert hw.cpu_model
    assert 1 <= hw.physical_cores <= hw.logical_cpus
    assert hw.logical_cpus == (os.cpu_count() or 1)
    assert 1 <= hw.default_threads <= hw.physical_cores
    assert hw.total_ram_bytes > GiB
    assert 0 < hw.available_ram_bytes <= max(hw.total_ram_bytes, hw.host_total_ram_bytes)
    assert hw.llama_system_info  # llama.cpp's own description of the build, e.g. "CPU : ... AVX2 = 1"
    assert isinstance(hw.llama_gpu_offload, bool)
    if not hw.gpus:
        assert hw.gpu_error
    if not hw.llama_gpu_offload:
        assert hw.default_gpu_layers == 0
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next((ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags")), "")
        if " avx2" in flags:
            assert "avx2" in hw.cpu_features


def test_detection_is_cached_until_cleared() -> None:
    first = detect_hardware()
    assert detect_hardware() is first
    clear_hardware_cache()
    assert detect_hardware() is not first


# ----- GPUs through a fake NVML -------------------------------------------------------------------------


def test_fake_h100_is_reported() -> None:
    nvml = FakeNVML([H100])
    hw = detect_hardware(nvml=nvml)
    assert hw.gpus == (
        GPUInfo(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            total_bytes=80 * GiB,
            free_bytes=79 * GiB,
            driver="550.54.15",
            compute_capability="9.0",
        ),
    )
    assert hw.gpu_error is None
    assert hw.nvml_available
    assert nvml.shutdown_calls == 1


def test_gpu_layers_follow_what_the_build_can_do() -> None:
    hw = detect_hardware(nvml=FakeNVML([H100]))
    assert dataclasses.replace(hw, llama_gpu_offload=True).default_gpu_layers == -1
    assert dataclasses.replace(hw, llama_gpu_offload=False).default_gpu_layers == 0


def test_old_pynvml_bytes_names_are_decoded() -> None:
    hw = detect_hardware(nvml=FakeNVML([(b"Tesla T4", 16 * GiB, 15 * GiB)], capability=(7, 5)))
    assert hw.gpus[0].name == "Tesla T4"
    assert hw.gpus[0].compute_capability == "7.5"


def test_no_driver_gives_no_gpus_and_a_reason() -> None:
    nvml = FakeNVML(init_error=NVMLError("NVML Shared Library Not Found"))
    hw = detect_hardware(nvml=nvml)
    assert hw.gpus == ()
    assert hw.gpu_error is not None and "no NVIDIA driver" in hw.gpu_error
    assert "Shared Library Not Found" in hw.gpu_error
    assert not hw.nvml_available
    # llama.cpp reports offload only when it registered a GPU device; without NVML that GPU is not an
    # NVIDIA one (Metal, ROCm, Vulkan), and it is still used.
    assert dataclasses.replace(hw, llama_gpu_offload=True).default_gpu_layers == -1
    assert dataclasses.replace(hw, llama_gpu_offload=False).default_gpu_layers == 0


def test_driver_with_no_gpu() -> None:
    hw = detect_hardware(nvml=FakeNVML([]))
    assert hw.gpus == ()
    assert hw.gpu_error == "the NVIDIA driver answered but reports no GPU"
    assert dataclasses.replace(hw, llama_gpu_offload=True).default_gpu_layers == 0


def test_pynvml_missing_is_a_reason_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    hw = detect_hardware(root="/")
    assert hw.gpus == ()
    assert hw.gpu_error is not None and "pynvml" in hw.gpu_error


# ----- cgroups and /proc through fake files -------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/user.slice/app.scope\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/user.slice/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/user.slice/app.scope/memory.max", f"{2 * GiB}\n")
    write(tmp_path, "sys/fs/cgroup/user.slice/app.scope/memory.current", f"{GiB // 2}\n")
    write(tmp_path, "sys/fs/cgroup/user.slice/app.scope/cpu.max", "150000 100000\n")
    assert read_cgroup_limits(tmp_path) == CgroupLimits(
        version=2, memory_limit_bytes=2 * GiB, memory_usage_bytes=GiB // 2, cpu_quota=1.5
    )


def test_cgroup_v2_lowest_ancestor_limit_wins(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/a/b\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/a/memory.max", f"{GiB}\n")
    write(tmp_path, "sys/fs/cgroup/a/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/a/b/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/a/b/cpu.max", "max 100000\n")
    limits = read_cgroup_limits(tmp_path)
    assert limits.memory_limit_bytes == GiB
    assert limits.cpu_quota is None


def test_cgroup_v2_inside_a_container_namespace(tmp_path: Path) -> None:
    # With a cgroup namespace the process sees itself at "/" and the limits sit at the mount root.
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{4 * GiB}\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000\n")
    limits = read_cgroup_limits(tmp_path)
    assert (limits.version, limits.memory_limit_bytes, limits.cpu_quota) == (2, 4 * GiB, 2.0)


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    write(
        tmp_path,
        "proc/self/cgroup",
        "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
    )
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", f"{3 * GiB}\n")
    write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", f"{GiB}\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert read_cgroup_limits(tmp_path) == CgroupLimits(
        version=1, memory_limit_bytes=3 * GiB, memory_usage_bytes=GiB, cpu_quota=2.5
    )


def test_cgroup_v1_unlimited(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "4:memory:/\n3:cpu:/\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    limits = read_cgroup_limits(tmp_path)
    assert (limits.version, limits.memory_limit_bytes, limits.cpu_quota) == (1, None, None)


def test_no_cgroup_files(tmp_path: Path) -> None:
    assert read_cgroup_limits(tmp_path) == CgroupLimits()


def test_cgroup_limit_lowers_ram_and_threads(tmp_path: Path) -> None:
    cpu = (
        "processor\t: {n}\nmodel name\t: Fake CPU\nphysical id\t: 0\ncore id\t\t: {n}\n"
        "flags\t\t: fpu avx avx2 fma f16c pni\n"
    )
    write(tmp_path, "proc/cpuinfo", "\n".join(cpu.format(n=n) for n in range(4)))
    write(
        tmp_path,
        "proc/meminfo",
        "MemTotal:       65536000 kB\nMemFree:        1000 kB\nMemAvailable:   60000000 kB\n",
    )
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", f"{8 * GiB}\n")
    write(tmp_path, "sys/fs/cgroup/memory.current", f"{GiB}\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "150000 100000\n")
    hw = detect_hardware(root=tmp_path, nvml=FakeNVML([]))
    assert hw.cpu_model == "Fake CPU"
    assert hw.cpu_features == ("sse3", "avx", "avx2", "fma", "f16c")
    assert hw.host_total_ram_bytes == 65536000 * 1024
    assert hw.total_ram_bytes == hw.cgroup_memory_limit_bytes == 8 * GiB
    assert hw.available_ram_bytes == 7 * GiB  # what the limit leaves, lower than MemAvailable
    assert hw.cpu_quota == 1.5
    assert hw.default_threads == 1


def test_arm_cpuinfo_features(tmp_path: Path) -> None:
    write(
        tmp_path,
        "proc/cpuinfo",
        "processor\t: 0\nBogoMIPS\t: 50.00\n"
        "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm sve\n"
        "CPU implementer\t: 0x41\n\nHardware\t: Fake Arm SoC\n",
    )
    hw = detect_hardware(root=tmp_path, nvml=FakeNVML([]))
    assert hw.cpu_features == ("neon", "dotprod", "i8mm", "fp16", "sve")
    assert hw.cpu_model == "Fake Arm SoC"


def test_default_threads_respects_affinity_and_quota() -> None:
    base = HardwareInfo(
        cpu_model="x",
        physical_cores=8,
        logical_cpus=16,
        cpu_features=(),
        total_ram_bytes=GiB,
        available_ram_bytes=GiB,
        gpus=(),
        gpu_error="none",
        llama_gpu_offload=False,
        llama_system_info="",
    )
    assert base.default_threads == 8
    assert dataclasses.replace(base, usable_cpus=4).default_threads == 4
    assert dataclasses.replace(base, usable_cpus=16, cpu_quota=2.5).default_threads == 2
    assert dataclasses.replace(base, cpu_quota=0.5).default_threads == 1


# ----- llmhost doctor -----------------------------------------------------------------------------------


def doctor_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A stand-in for llmhost's own app (its callback keeps `doctor` a subcommand)."""

    register(app)
    return app


def test_doctor_command_with_the_default_model_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    settings = make_settings(tmp_path / "data")
    make_service(settings, tiny_model_path).close()
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LLMHOST_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("LLMHOST_ENGINE__N_CTX", "1024")
    result = CliRunner().invoke(doctor_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    out = result.output
    hw = detect_hardware()
    assert "Hardware" in out and hw.cpu_model in out
    assert f"{hw.physical_cores} physical, {hw.logical_cpus} logical" in out
    assert hw.llama_system_info in out
    assert f"threads          {hw.default_threads} (physical cores" in out
    assert "default model    tiny (llama, F32," in out
    assert "configured       4 slots x 1024 tokens: ~" in out and ": fits" in out
    assert "memory budget    RAM:" in out
    if not hw.gpus:
        assert "GPUs             none (" in out


def test_doctor_without_the_model_says_so_and_creates_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tmp_path / "empty"
    monkeypatch.setenv("LLMHOST_DATA_DIR", str(data))
    result = CliRunner().invoke(doctor_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    assert "gemma3:270m is not imported yet" in result.output
    assert not data.exists()


def fake_gpu_machine(offload: bool) -> HardwareInfo:
    """This machine, as if it had an H100 (through the fake NVML) and a build that can or cannot offload."""
    return dataclasses.replace(detect_hardware(nvml=FakeNVML([H100])), llama_gpu_offload=offload)


def test_doctor_tells_how_to_get_a_cuda_build(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    make_service(settings, tiny_model_path).close()
    report = doctor_report(settings, fake_gpu_machine(offload=False))
    assert "GPU 0            NVIDIA H100 80GB HBM3, 80.0 GiB VRAM, 79.0 GiB free (compute 9.0" in report
    assert "GPU layers       0 (the llama.cpp build cannot offload)" in report
    assert "memory budget    RAM:" in report
    assert "this llama-cpp-python build is CPU-only" in report
    assert CUDA_BUILD_COMMAND in report
    assert CUDA_BUILD_COMMAND == (
        'CMAKE_ARGS="-DGGML_CUDA=on" .venv/bin/pip install --force-reinstall --no-cache-dir '
        "llama-cpp-python==0.3.36"
    )


def test_doctor_budgets_vram_on_a_cuda_build(tmp_path: Path, tiny_model_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    make_service(settings, tiny_model_path).close()
    report = doctor_report(settings, fake_gpu_machine(offload=True))
    assert "GPU layers       all (default)" in report
    assert "memory budget    VRAM: 71.1 GiB (90% of 79.0 GiB free)" in report
    assert CUDA_BUILD_COMMAND not in report


def test_doctor_on_a_gateway_only_config_says_no_model_is_loaded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", default_model="")
    report = doctor_report(settings, fake_gpu_machine(offload=False))
    assert 'default model    none (default_model = "": the server loads no local model)' in report
