"""The system and resources tool groups against this machine's real processes, CPU, memory, disks and
network (psutil), and its GPUs through NVML. The test machine has no GPU: there res_gpus must answer an
empty list with a reason, and a stand-in NVML (pynvml's functions, H200 numbers) checks the mapping."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pynvml
import pytest

from llmhost import __version__
from llmhost.errors import NotFoundError
from llmhost.systools.resources import ResourcesTools
from llmhost.systools.settings import ResourcesSettings, SystemSettings
from llmhost.systools.system import SystemTools, redact_cmdline

SECRET = "hunter2-not-for-agents"


@dataclass
class Children:
    marker: str
    hog: subprocess.Popen[str]
    sleeper: subprocess.Popen[str]


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running ``code``; it prints `ready` once it is where the test wants it."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def children() -> Iterator[Children]:
    """Two marked, idle children: one holding 256 MiB, one asleep with secrets on its command line."""
    marker = f"llmhost-test-{uuid.uuid4().hex[:8]}"
    wait = "import time; print('ready', flush=True); time.sleep(120)"
    procs = Children(
        marker=marker,
        hog=_child(
            "import time; held = b'x' * (256 << 20); print('ready', flush=True); time.sleep(120)", marker
        ),
        sleeper=_child(
            wait,
            marker,
            f"--api-key={SECRET}",
            "--password",
            SECRET,
            f"postgresql://app:{SECRET}@db/sales",
            "--verbose",
        ),
    )
    yield procs
    _stop(procs.hog)
    _stop(procs.sleeper)


@pytest.fixture
def spinner(children: Children) -> Iterator[subprocess.Popen[str]]:
    """A marked child spinning on one CPU, for one test only."""
    proc = _child("print('ready', flush=True)\nwhile True: pass", children.marker)
    yield proc
    _stop(proc)


# ----- system ----------------------------------------------------------------------------------------
def test_system_tools_are_named_and_read_only() -> None:
    tools = SystemTools(SystemSettings()).tools()
    assert [t.name for t in tools] == ["sys_processes", "sys_process", "sys_info"]
    assert all(t.read_only and not t.destructive and t.func.__doc__ for t in tools)


def test_busy_process_comes_first_by_cpu(children: Children, spinner: subprocess.Popen[str]) -> None:
    listed = SystemTools(SystemSettings()).sys_processes(name_contains=children.marker, sample_seconds=0.3)
    pids = [p.pid for p in listed.processes]
    assert set(pids) == {spinner.pid, children.hog.pid, children.sleeper.pid}
    assert pids[0] == spinner.pid
    assert listed.processes[0].cpu_percent > 0
    assert (listed.total, listed.truncated, listed.sort_by) == (3, False, "cpu")
    mine = listed.processes[0]
    assert mine.user == psutil.Process().username()
    assert mine.status in {"running", "sleeping", "disk-sleep"}


def test_big_process_comes_first_by_memory(children: Children) -> None:
    listed = SystemTools(SystemSettings()).sys_processes(
        sort_by="memory", name_contains=children.marker, sample_seconds=0.05
    )
    first = listed.processes[0]
    assert first.pid == children.hog.pid
    assert first.rss_bytes is not None and first.rss_bytes >= 200 << 20
    assert first.memory_percent is not None and first.memory_percent > 0


def test_process_list_is_capped_by_the_caller_and_by_settings(children: Children) -> None:
    two = SystemTools(SystemSettings()).sys_processes(
        name_contains=children.marker, limit=2, sample_seconds=0.05
    )
    assert (len(two.processes), two.total, two.truncated) == (2, 2, False)
    one = SystemTools(SystemSettings()).sys_processes(
        name_contains=children.marker, limit=1, sample_seconds=0.05
    )
    assert (len(one.processes), one.total, one.truncated) == (1, 2, True)
    capped = SystemTools(SystemSettings(max_processes=1)).sys_processes(limit=50, sample_seconds=0.05)
    assert len(capped.processes) == 1 and capped.truncated
    assert capped.total > 1


def test_command_lines_are_cut_and_their_secrets_masked(children: Children) -> None:
    tools = SystemTools(SystemSettings())
    listed = tools.sys_processes(name_contains=children.marker, sample_seconds=0.05)
    sleeper = next(p for p in listed.processes if p.pid == children.sleeper.pid)
    assert children.marker in sleeper.cmdline and "--api-key=***" in sleeper.cmdline
    assert "--password ***" in sleeper.cmdline and "postgresql://app:***@db/sales" in sleeper.cmdline
    assert "--verbose" in sleeper.cmdline and SECRET not in sleeper.cmdline
    detail = tools.sys_process(pid=children.sleeper.pid, sample_seconds=0.05)
    assert SECRET not in detail.model_dump_json()
    assert all(len(p.cmdline) <= 256 for p in tools.sys_processes(sample_seconds=0.05).processes)


def test_redact_cmdline_masks_secret_options_and_cuts_long_lines() -> None:
    args = ["app", "TOKEN=abc", "--db-password=x", "-p", "8080", "--secret", "s", "--auth", "--next"]
    assert redact_cmdline(args, 200) == "app TOKEN=*** --db-password=*** -p 8080 --secret *** --auth --next"
    long = redact_cmdline(["x" * 500], 100)
    assert len(long) == 100 and long.endswith("…")


def test_one_process_in_detail(children: Children) -> None:
    me = SystemTools(SystemSettings()).sys_process(pid=os.getpid(), sample_seconds=0.05)
    assert me.pid == os.getpid() and me.ppid == os.getppid()
    assert me.exe and me.cwd == os.getcwd()
    assert me.threads is not None and me.threads >= 1
    assert me.open_fds is not None and me.open_fds > 0
    assert me.created is not None and me.cpu_user_seconds is not None
    assert {children.hog.pid, children.sleeper.pid} <= set(me.children)
    assert me.rss_bytes is not None and me.vms_bytes is not None and me.vms_bytes >= me.rss_bytes


def test_unknown_pid_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no process with pid"):
        SystemTools(SystemSettings()).sys_process(pid=2**31 - 1, sample_seconds=0.05)


def test_system_info_describes_this_machine() -> None:
    info = SystemTools(SystemSettings()).sys_info()
    assert info.hostname == socket.gethostname()
    assert info.llmhost_version == __version__
    assert info.python.endswith(".".join(map(str, sys.version_info[:3])))
    assert info.uptime_seconds > 0 and info.boot_time.endswith("+00:00")
    assert info.kernel == os.uname().release and info.process_count > 0


# ----- resources -------------------------------------------------------------------------------------
def test_cpu_status_has_every_core() -> None:
    cpu = ResourcesTools(ResourcesSettings()).res_cpu(sample_seconds=0.1)
    assert cpu.logical_cores == psutil.cpu_count() == len(cpu.per_core_percent)
    assert all(0 <= p <= 100 for p in cpu.per_core_percent) and 0 <= cpu.percent <= 100
    assert cpu.load_average is not None and len(cpu.load_average) == 3


def test_memory_status_adds_up() -> None:
    memory = ResourcesTools(ResourcesSettings()).res_memory()
    assert memory.total_bytes == psutil.virtual_memory().total
    assert 0 < memory.available_bytes <= memory.total_bytes
    assert memory.used_bytes == memory.total_bytes - memory.available_bytes
    assert memory.swap_used_bytes <= memory.swap_total_bytes


def test_disks_include_the_root_mount_with_its_usage() -> None:
    disks = ResourcesTools(ResourcesSettings()).res_disks()
    root = next(d for d in disks.disks if d.mountpoint == "/")
    assert root.total_bytes is not None and root.free_bytes is not None and root.used_bytes is not None
    assert root.free_bytes <= root.total_bytes and not disks.truncated


def test_network_counters_see_loopback_traffic() -> None:
    tools = ResourcesTools(ResourcesSettings())
    before = next(i for i in tools.res_network().interfaces if i.name == "lo")
    assert "127.0.0.1" in before.addresses and before.is_up
    payload = b"x" * (1 << 20)
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        peer, _ = server.accept()
        with peer:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = 0
            while chunk := peer.recv(1 << 16):
                received += len(chunk)
    assert received == len(payload)
    after = next(i for i in tools.res_network().interfaces if i.name == "lo")
    assert after.bytes_sent - before.bytes_sent >= len(payload)
    assert after.packets_recv > before.packets_recv


def test_disk_and_interface_lists_are_capped() -> None:
    tools = ResourcesTools(ResourcesSettings(max_items=1))
    network = tools.res_network()
    assert len(network.interfaces) == 1 and network.truncated == (
        len(psutil.net_io_counters(pernic=True)) > 1
    )
    assert len(tools.res_disks().disks) <= 1


def _nvml_answers() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_gpus_through_the_real_nvml() -> None:
    listed = ResourcesTools(ResourcesSettings()).res_gpus()
    if _nvml_answers():
        assert listed.gpus and listed.reason is None
        assert all(g.memory_total_bytes >= g.memory_used_bytes for g in listed.gpus)
    else:  # this test machine: no NVIDIA driver, no GPU
        assert listed.gpus == [] and listed.driver_version is None
        assert listed.reason is not None and "NVML is unavailable" in listed.reason


class StandInNVML:
    """pynvml's functions over made-up devices: what the driver of one H200 would answer."""

    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, count: int = 1, power: bool = True) -> None:
        self.count, self.power, self.open = count, power, 0

    def nvmlInit(self) -> None:
        self.open += 1

    def nvmlShutdown(self) -> None:
        self.open -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.124.06"

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle:08d}"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return pynvml.c_nvmlMemory_t(total=150 << 30, free=100 << 30, used=50 << 30)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return pynvml.c_nvmlUtilization_t(gpu=87, memory=40)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if not self.power:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 412_345


def test_gpu_fields_map_from_nvml() -> None:
    nvml = StandInNVML(count=2, power=False)
    listed = ResourcesTools(ResourcesSettings(), nvml=nvml).res_gpus()
    assert (listed.driver_version, listed.reason, len(listed.gpus)) == ("570.124.06", None, 2)
    gpu = listed.gpus[1]
    assert (gpu.index, gpu.name, gpu.uuid) == (1, "NVIDIA H200", "GPU-00000001")
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes, gpu.memory_free_bytes) == (
        150 << 30,
        50 << 30,
        100 << 30,
    )
    assert (gpu.utilization_percent, gpu.memory_utilization_percent, gpu.temperature_c) == (87, 40, 61)
    assert gpu.power_watts is None  # not supported on this device: null, not an error
    assert nvml.open == 0  # NVML shut down again
    assert ResourcesTools(ResourcesSettings(), nvml=StandInNVML()).res_gpus().gpus[0].power_watts == 412.3


def test_driver_without_devices_gives_a_reason() -> None:
    listed = ResourcesTools(ResourcesSettings(), nvml=StandInNVML(count=0)).res_gpus()
    assert listed.gpus == [] and listed.reason == "the NVIDIA driver answered but reports no GPU"


def test_resources_tools_are_named_and_read_only() -> None:
    tools = ResourcesTools(ResourcesSettings()).tools()
    assert [t.name for t in tools] == ["res_cpu", "res_memory", "res_disks", "res_network", "res_gpus"]
    assert all(t.read_only and not t.open_world for t in tools)
