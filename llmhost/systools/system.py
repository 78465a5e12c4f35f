"""The ``system`` tool group: the processes of this machine and what it runs on, read-only (psutil).

Nothing here changes a process. Command lines are cut to a length and have the values of password-,
token- and key-like options and the passwords in URLs masked; environments are never read."""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import psutil
from pydantic import BaseModel, Field

from llmhost import __version__
from llmhost.errors import NotFoundError
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.settings import SystemSettings

__all__ = ["ProcessDetail", "ProcessList", "ProcessSummary", "SystemInfo", "SystemTools", "redact_cmdline"]

T = TypeVar("T")
LIST_CMDLINE_CHARS = 256
DETAIL_CMDLINE_CHARS = 4096
_SECRET_WORD = r"[\w.-]*(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|auth|credential)[\w.-]*"
_SECRET_OPTION = re.compile(rf"(?i)^(-{{0,2}}{_SECRET_WORD})=.+$")
_SECRET_FLAG = re.compile(rf"(?i)^--?{_SECRET_WORD}$")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^/\s@]+@")
SampleSeconds = Annotated[
    float,
    Field(ge=0.05, le=3.0, description="How long to measure CPU use, in seconds (0.05 to 3)."),
]


def redact_cmdline(args: list[str], limit: int) -> str:
    """``args`` joined by spaces and cut to ``limit`` characters, with the values of secret-looking
    options (``--password=x``, ``--api-key x``, ``TOKEN=x``) and URL passwords replaced by ``***``."""
    out: list[str] = []
    mask_next = False
    for arg in args:
        if mask_next and not arg.startswith("-"):
            out.append("***")
            mask_next = False
            continue
        mask_next = bool(_SECRET_FLAG.match(arg))
        arg = _SECRET_OPTION.sub(r"\1=***", arg)
        out.append(_URL_PASSWORD.sub(r"\1:***@", arg))
    text = " ".join(out)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def _maybe(read: Callable[[], T]) -> T | None:
    """``read()``, or None where the OS keeps it from us (another user's process, a zombie) or the
    process ended meanwhile."""
    try:
        return read()
    except (psutil.Error, OSError, NotImplementedError):
        return None


class ProcessSummary(BaseModel):
    pid: int = Field(description="Process id.")
    name: str = Field(description="Executable name.")
    user: str | None = Field(description="Owner's user name (null where the OS hides it).")
    cpu_percent: float = Field(description="CPU use over the sample, in % of one core (can pass 100).")
    rss_bytes: int | None = Field(description="Resident memory, in bytes.")
    memory_percent: float | None = Field(description="Resident memory as % of physical RAM.")
    status: str | None = Field(description="running, sleeping, zombie, ...")
    cmdline: str = Field(description="Command line, cut short, secret-looking option values masked.")


class ProcessList(BaseModel):
    sort_by: Literal["cpu", "memory"] = Field(description="The order: highest CPU or memory first.")
    sample_seconds: float = Field(description="How long CPU use was measured.")
    total: int = Field(description="Processes that matched, before the cap.")
    truncated: bool = Field(description="True when more processes matched than are listed.")
    processes: list[ProcessSummary] = Field(description="The top processes, highest first.")


class ProcessDetail(ProcessSummary):
    ppid: int | None = Field(description="Parent process id.")
    exe: str | None = Field(description="Path of the executable.")
    cwd: str | None = Field(description="Working directory.")
    created: str | None = Field(description="Start time, ISO 8601 UTC.")
    cpu_user_seconds: float | None = Field(description="CPU time spent in user mode since start.")
    cpu_system_seconds: float | None = Field(description="CPU time spent in the kernel since start.")
    vms_bytes: int | None = Field(description="Virtual memory size, in bytes.")
    threads: int | None = Field(description="Number of threads.")
    open_fds: int | None = Field(description="Open file descriptors (POSIX).")
    nice: int | None = Field(description="Scheduling priority (niceness).")
    children: list[int] = Field(description="Pids of direct children (capped like sys_processes).")


class SystemInfo(BaseModel):
    hostname: str = Field(description="This machine's host name.")
    os: str = Field(description="Operating system (Linux, Darwin, Windows).")
    os_release: str | None = Field(description="Distribution or release name, e.g. `Debian GNU/Linux 12`.")
    kernel: str = Field(description="Kernel release.")
    architecture: str = Field(description="Machine architecture, e.g. x86_64.")
    boot_time: str = Field(description="When the machine booted, ISO 8601 UTC.")
    uptime_seconds: float = Field(description="Seconds since boot.")
    cpu_count: int | None = Field(description="Logical CPUs.")
    process_count: int = Field(description="Processes running now.")
    python: str = Field(description="Python implementation and version serving llmhost.")
    llmhost_version: str = Field(description="The llmhost version.")


_SUMMARY_ATTRS = ["pid", "name", "username", "status", "cmdline", "memory_info", "memory_percent"]


def _cpu_seconds(proc: psutil.Process) -> float | None:
    """CPU time ``proc`` has used so far (user + kernel). Measuring with our own snapshots, not
    psutil's ``cpu_percent`` (whose baseline lives on psutil's shared, cached objects), keeps calls
    on parallel threads from skewing each other."""
    times = _maybe(proc.cpu_times)
    return times.user + times.system if times is not None else None


def _cpu_percent(before: float | None, after: float | None, elapsed: float) -> float:
    return max(0.0, (after - before) / elapsed * 100) if before is not None and after is not None else 0.0


def _rss(info: dict[str, Any]) -> int:
    return int(getattr(info.get("memory_info"), "rss", 0) or 0)


def _summary(proc: psutil.Process, info: dict[str, Any], cpu: float, limit: int) -> ProcessSummary:
    """One process as listed, from ``info`` (psutil's ``as_dict`` of ``_SUMMARY_ATTRS``)."""
    memory_percent = info.get("memory_percent")
    return ProcessSummary(
        pid=proc.pid,
        name=str(info.get("name") or ""),
        user=info.get("username"),
        cpu_percent=round(cpu, 1),
        rss_bytes=getattr(info.get("memory_info"), "rss", None),
        memory_percent=round(float(memory_percent), 2) if memory_percent is not None else None,
        status=info.get("status"),
        cmdline=redact_cmdline(list(info.get("cmdline") or []), limit),
    )


class SystemTools(ToolGroup):
    """Processes on this machine and facts about it; reads only."""

    name: ClassVar[str] = "system"
    scope: ClassVar[str] = "tools:system"

    def __init__(self, settings: SystemSettings) -> None:
        self._settings = settings

    def tools(self) -> list[SystemTool]:
        return [
            SystemTool("sys_processes", self.sys_processes, "List top processes"),
            SystemTool("sys_process", self.sys_process, "Show one process"),
            SystemTool("sys_info", self.sys_info, "Describe this machine"),
        ]

    def sys_processes(
        self,
        sort_by: Annotated[
            Literal["cpu", "memory"],
            Field(description="Rank by CPU use over the sample, or by resident memory."),
        ] = "cpu",
        limit: Annotated[
            int | None, Field(ge=1, description="List at most this many (never above the server's cap).")
        ] = None,
        name_contains: Annotated[
            str | None,
            Field(description="Only processes whose name or command line contains this (any case)."),
        ] = None,
        sample_seconds: SampleSeconds = 0.5,
    ) -> ProcessList:
        """List the busiest processes on this machine, highest CPU (measured over `sample_seconds`) or
        resident memory first: pid, name, user, CPU %, memory, status and a shortened command line
        (secret-looking option values masked). Use sys_process for one pid in detail."""
        cap = min(limit or self._settings.max_processes, self._settings.max_processes)
        needle = name_contains.lower() if name_contains else None
        procs: list[tuple[psutil.Process, dict[str, Any], float | None]] = []
        for proc in psutil.process_iter(_SUMMARY_ATTRS):
            info: dict[str, Any] = proc.info
            text = f"{info.get('name') or ''} {' '.join(info.get('cmdline') or [])}".lower()
            if needle is None or needle in text:
                procs.append((proc, info, _cpu_seconds(proc)))
        started = time.monotonic()
        time.sleep(sample_seconds)
        elapsed = time.monotonic() - started
        measured = [(p, info, _cpu_percent(t, _cpu_seconds(p), elapsed)) for p, info, t in procs]
        if sort_by == "cpu":
            measured.sort(key=lambda m: (m[2], _rss(m[1])), reverse=True)
        else:
            measured.sort(key=lambda m: _rss(m[1]), reverse=True)
        top = [_summary(proc, info, cpu, LIST_CMDLINE_CHARS) for proc, info, cpu in measured[:cap]]
        return ProcessList(
            sort_by=sort_by,
            sample_seconds=sample_seconds,
            total=len(measured),
            truncated=len(measured) > cap,
            processes=top,
        )

    def sys_process(
        self,
        pid: Annotated[int, Field(ge=0, description="The process id, e.g. from sys_processes.")],
        sample_seconds: SampleSeconds = 0.2,
    ) -> ProcessDetail:
        """Show one process in detail: parent, executable, working directory, start time, CPU (now,
        over `sample_seconds`, and in total), memory, threads, open file descriptors, niceness, direct
        children and its command line (secret-looking values masked). Environments are never shown."""
        try:
            proc = psutil.Process(pid)
            before, started = _cpu_seconds(proc), time.monotonic()
            time.sleep(sample_seconds)
            cpu = _cpu_percent(before, _cpu_seconds(proc), time.monotonic() - started)
            with proc.oneshot():
                info = proc.as_dict(_SUMMARY_ATTRS)
                times = _maybe(proc.cpu_times)
                created = _maybe(proc.create_time)
                children = _maybe(proc.children) or []
                return ProcessDetail(
                    **_summary(proc, info, cpu, DETAIL_CMDLINE_CHARS).model_dump(),
                    ppid=_maybe(proc.ppid),
                    exe=_maybe(proc.exe) or None,
                    cwd=_maybe(proc.cwd),
                    created=_iso(created) if created else None,
                    cpu_user_seconds=times.user if times else None,
                    cpu_system_seconds=times.system if times else None,
                    vms_bytes=getattr(info.get("memory_info"), "vms", None),
                    threads=_maybe(proc.num_threads),
                    open_fds=_maybe(proc.num_fds) if os.name == "posix" else None,
                    nice=_maybe(lambda: int(proc.nice())),
                    children=[child.pid for child in children[: self._settings.max_processes]],
                )
        except psutil.NoSuchProcess as exc:
            raise NotFoundError(f"no process with pid {pid}", param="pid") from exc

    def sys_info(self) -> SystemInfo:
        """Describe this machine: host name, operating system and release, kernel, architecture, boot
        time and uptime, CPU and process counts, and the Python and llmhost versions serving you."""
        boot = psutil.boot_time()
        try:
            os_release: str | None = platform.freedesktop_os_release().get("PRETTY_NAME")
        except OSError:
            os_release = platform.platform(terse=True) or None
        return SystemInfo(
            hostname=socket.gethostname(),
            os=platform.system(),
            os_release=os_release,
            kernel=platform.release(),
            architecture=platform.machine(),
            boot_time=_iso(boot),
            uptime_seconds=round(time.time() - boot, 1),
            cpu_count=psutil.cpu_count(logical=True),
            process_count=len(psutil.pids()),
            python=f"{platform.python_implementation()} {platform.python_version()}",
            llmhost_version=__version__,
        )
