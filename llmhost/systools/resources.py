"""The ``resources`` tool group: CPU, memory, disks and network counters (psutil) and NVIDIA GPUs
(NVML through nvidia-ml-py), read-only, as a snapshot taken when the tool is called."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import psutil
import pynvml
from pydantic import BaseModel, Field

from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.settings import ResourcesSettings

__all__ = [
    "CpuStatus",
    "DiskList",
    "DiskUsage",
    "GpuList",
    "GpuStatus",
    "MemoryStatus",
    "NetworkInterface",
    "NetworkList",
    "ResourcesTools",
]

T = TypeVar("T")
_FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def _maybe(read: Callable[[], T]) -> T | None:
    """``read()``, or None where the OS or the driver does not say (not supported, not allowed)."""
    try:
        return read()
    except Exception:
        return None


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _busy_percent(before: Any, after: Any) -> float:
    """Busy share of one CPU between two ``cpu_times`` snapshots. Our own snapshots, not psutil's
    ``cpu_percent`` (one module-wide baseline), so calls on parallel threads do not skew each other."""

    def split(t: Any) -> tuple[float, float]:  # (all time, idle time); guest time is inside user time
        total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        return total, t.idle + getattr(t, "iowait", 0.0)

    (total1, idle1), (total2, idle2) = split(before), split(after)
    if total2 <= total1:
        return 0.0
    return round(min(100.0, max(0.0, 100 * (1 - (idle2 - idle1) / (total2 - total1)))), 1)


class CpuStatus(BaseModel):
    logical_cores: int | None = Field(description="Logical CPUs (hardware threads).")
    physical_cores: int | None = Field(description="Physical cores, where the OS says.")
    percent: float = Field(description="Use of all CPUs together over the sample, in %.")
    per_core_percent: list[float] = Field(description="Use of each logical CPU over the sample, in %.")
    load_average: list[float] | None = Field(description="Run-queue load over 1, 5 and 15 minutes.")
    frequency_mhz: float | None = Field(description="Current clock, in MHz (null where not reported).")
    frequency_max_mhz: float | None = Field(description="Highest clock, in MHz (null where not reported).")
    sample_seconds: float = Field(description="How long use was measured.")


class MemoryStatus(BaseModel):
    total_bytes: int = Field(description="Physical RAM.")
    available_bytes: int = Field(description="RAM that can be given to programs without swapping.")
    used_bytes: int = Field(description="RAM in use.")
    percent: float = Field(description="RAM in use, in % ((total - available) / total).")
    swap_total_bytes: int = Field(description="Swap space.")
    swap_used_bytes: int = Field(description="Swap in use.")
    swap_percent: float = Field(description="Swap in use, in %.")


class DiskUsage(BaseModel):
    device: str = Field(description="The device or source mounted.")
    mountpoint: str = Field(description="Where it is mounted.")
    fstype: str = Field(description="File system type.")
    read_only: bool = Field(description="Mounted read-only.")
    total_bytes: int | None = Field(description="Size (null where the mount cannot be read).")
    used_bytes: int | None = Field(description="Space used.")
    free_bytes: int | None = Field(description="Space free to unprivileged users.")
    percent: float | None = Field(description="Space used, in %.")


class DiskList(BaseModel):
    disks: list[DiskUsage] = Field(description="Mounted physical file systems, with their usage.")
    truncated: bool = Field(description="True when more mounts exist than the cap lets through.")


class NetworkInterface(BaseModel):
    name: str = Field(description="Interface name.")
    is_up: bool | None = Field(description="Whether the interface is up.")
    speed_mbps: int | None = Field(description="Link speed in Mbit/s (null or 0 where unknown).")
    mtu: int | None = Field(description="MTU, in bytes.")
    addresses: list[str] = Field(description="Its IPv4 and IPv6 addresses.")
    bytes_sent: int = Field(description="Bytes sent since boot.")
    bytes_recv: int = Field(description="Bytes received since boot.")
    packets_sent: int = Field(description="Packets sent since boot.")
    packets_recv: int = Field(description="Packets received since boot.")
    errors_in: int = Field(description="Receive errors.")
    errors_out: int = Field(description="Send errors.")
    drops_in: int = Field(description="Incoming packets dropped.")
    drops_out: int = Field(description="Outgoing packets dropped.")


class NetworkList(BaseModel):
    interfaces: list[NetworkInterface] = Field(description="Network interfaces and their counters.")
    truncated: bool = Field(description="True when more interfaces exist than the cap lets through.")


class GpuStatus(BaseModel):
    index: int = Field(description="NVML device index.")
    name: str = Field(description="Product name.")
    uuid: str | None = Field(description="Device UUID.")
    memory_total_bytes: int = Field(description="Device memory.")
    memory_used_bytes: int = Field(description="Device memory in use.")
    memory_free_bytes: int = Field(description="Device memory free.")
    utilization_percent: int | None = Field(description="Time the GPU was busy over the last sample, in %.")
    memory_utilization_percent: int | None = Field(description="Time memory was read or written, in %.")
    temperature_c: int | None = Field(description="GPU core temperature, in degrees Celsius.")
    power_watts: float | None = Field(description="Power drawn now, in watts.")


class GpuList(BaseModel):
    gpus: list[GpuStatus] = Field(description="NVIDIA GPUs (empty when none can be read; see `reason`).")
    driver_version: str | None = Field(description="The NVIDIA driver version.")
    reason: str | None = Field(description="Why `gpus` is empty (no driver, no NVML, no device), else null.")


class ResourcesTools(ToolGroup):
    """A snapshot of this machine's CPU, memory, disks, network and GPUs. ``nvml`` replaces the pynvml
    module (any object with its functions), for a machine without a GPU."""

    name: ClassVar[str] = "resources"
    scope: ClassVar[str] = "tools:resources"

    def __init__(self, settings: ResourcesSettings, *, nvml: Any | None = None) -> None:
        self._settings = settings
        self._nvml = nvml if nvml is not None else pynvml

    def tools(self) -> list[SystemTool]:
        return [
            SystemTool("res_cpu", self.res_cpu, "CPU use and load"),
            SystemTool("res_memory", self.res_memory, "Memory and swap"),
            SystemTool("res_disks", self.res_disks, "Disk usage"),
            SystemTool("res_network", self.res_network, "Network interface counters"),
            SystemTool("res_gpus", self.res_gpus, "GPU memory, use and temperature"),
        ]

    def res_cpu(
        self,
        sample_seconds: Annotated[
            float, Field(ge=0.05, le=3.0, description="How long to measure CPU use, in seconds (0.05 to 3).")
        ] = 0.5,
    ) -> CpuStatus:
        """Show CPU use now: core counts, total and per-core use measured over `sample_seconds`, the
        1/5/15-minute load average and the clock frequency."""
        before = psutil.cpu_times(percpu=True)
        time.sleep(sample_seconds)
        per_core = [_busy_percent(a, b) for a, b in zip(before, psutil.cpu_times(percpu=True), strict=False)]
        freq = _maybe(psutil.cpu_freq)
        load = _maybe(psutil.getloadavg)
        return CpuStatus(
            logical_cores=psutil.cpu_count(logical=True),
            physical_cores=psutil.cpu_count(logical=False),
            percent=round(sum(per_core) / len(per_core), 1) if per_core else 0.0,
            per_core_percent=per_core,
            load_average=[round(x, 2) for x in load] if load else None,
            frequency_mhz=round(freq.current, 1) if freq and freq.current else None,
            frequency_max_mhz=round(freq.max, 1) if freq and freq.max else None,
            sample_seconds=sample_seconds,
        )

    def res_memory(self) -> MemoryStatus:
        """Show physical memory (total, available, used) and swap (total, used)."""
        ram, swap = psutil.virtual_memory(), psutil.swap_memory()
        return MemoryStatus(
            total_bytes=ram.total,
            available_bytes=ram.available,
            used_bytes=ram.total - ram.available,
            percent=ram.percent,
            swap_total_bytes=swap.total,
            swap_used_bytes=swap.used,
            swap_percent=swap.percent,
        )

    def res_disks(self) -> DiskList:
        """List the mounted physical file systems with their size, space used and free."""
        cap = self._settings.max_items
        parts = psutil.disk_partitions(all=False)
        disks = []
        for part in parts[:cap]:
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:  # a mount we may not read (permissions, a stale network share)
                usage = None
            disks.append(
                DiskUsage(
                    device=part.device,
                    mountpoint=part.mountpoint,
                    fstype=part.fstype,
                    read_only="ro" in part.opts.split(","),
                    total_bytes=usage.total if usage else None,
                    used_bytes=usage.used if usage else None,
                    free_bytes=usage.free if usage else None,
                    percent=usage.percent if usage else None,
                )
            )
        return DiskList(disks=disks, truncated=len(parts) > cap)

    def res_network(self) -> NetworkList:
        """List the network interfaces with their state, speed, addresses and traffic counters since
        boot (bytes, packets, errors and drops, each way)."""
        cap = self._settings.max_items
        counters = psutil.net_io_counters(pernic=True)
        stats = _maybe(psutil.net_if_stats) or {}
        addrs = _maybe(psutil.net_if_addrs) or {}
        interfaces = []
        for name in sorted(counters)[:cap]:
            io, stat = counters[name], stats.get(name)
            interfaces.append(
                NetworkInterface(
                    name=name,
                    is_up=stat.isup if stat else None,
                    speed_mbps=stat.speed if stat else None,
                    mtu=stat.mtu if stat else None,
                    addresses=[a.address for a in addrs.get(name, []) if a.family in _FAMILIES],
                    bytes_sent=io.bytes_sent,
                    bytes_recv=io.bytes_recv,
                    packets_sent=io.packets_sent,
                    packets_recv=io.packets_recv,
                    errors_in=io.errin,
                    errors_out=io.errout,
                    drops_in=io.dropin,
                    drops_out=io.dropout,
                )
            )
        return NetworkList(interfaces=interfaces, truncated=len(counters) > cap)

    def res_gpus(self) -> GpuList:
        """List the NVIDIA GPUs: name, memory total/used/free, utilisation, temperature and power. When
        none can be read (no driver, no NVIDIA GPU) the list is empty and `reason` says why."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:
            return GpuList(
                gpus=[], driver_version=None, reason=f"NVML is unavailable: {_text(exc) or 'no driver'}"
            )
        try:
            driver = _maybe(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
            gpus = [self._gpu(index) for index in range(int(nvml.nvmlDeviceGetCount()))]
        except Exception as exc:
            return GpuList(gpus=[], driver_version=None, reason=f"NVML query failed: {_text(exc)}")
        finally:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
        reason = None if gpus else "the NVIDIA driver answered but reports no GPU"
        return GpuList(gpus=gpus, driver_version=driver, reason=reason)

    def _gpu(self, index: int) -> GpuStatus:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        rates = _maybe(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        power_mw = _maybe(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return GpuStatus(
            index=index,
            name=_text(nvml.nvmlDeviceGetName(handle)),
            uuid=_maybe(lambda: _text(nvml.nvmlDeviceGetUUID(handle))),
            memory_total_bytes=int(memory.total),
            memory_used_bytes=int(memory.used),
            memory_free_bytes=int(memory.free),
            utilization_percent=int(rates.gpu) if rates is not None else None,
            memory_utilization_percent=int(rates.memory) if rates is not None else None,
            temperature_c=_maybe(
                lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
            ),
            power_watts=round(power_mw / 1000, 1) if power_mw is not None else None,
        )
