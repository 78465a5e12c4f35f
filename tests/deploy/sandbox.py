"""Run a command inside the part of a systemd unit's sandbox that a process can put on itself without
systemd, for the deploy tests:

* ``NoNewPrivileges=yes``: ``prctl(PR_SET_NO_NEW_PRIVS)``;
* ``MemoryDenyWriteExecute=yes``: the kernel's own W^X switch, ``prctl(PR_SET_MDWE,
  PR_MDWE_REFUSE_EXEC_GAIN)`` (Linux 6.3+): no mapping may be writable and executable, none may turn
  executable after it was writable, and the rule passes on through ``execve``;
* ``SystemCallFilter=`` with ``SystemCallErrorNumber=EPERM``: a seccomp filter that allows the named
  system calls and fails every other with EPERM.

    /usr/bin/python3 tests/deploy/sandbox.py ALLOWED_SYSCALLS_FILE -- COMMAND [ARG ...]

``ALLOWED_SYSCALLS_FILE`` holds the allowed names, whitespace-separated (tests/deploy/units.py resolves a
unit's filter with systemd's own groups). Names this kernel does not know are skipped, as systemd skips
them. libseccomp's Python binding is Debian's python3-seccomp, so this runs under Debian's python3, and
the command it starts is any program.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

import seccomp  # type: ignore[import-not-found]

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def _prctl(libc: ctypes.CDLL, option: int, value: int, what: str) -> None:
    if libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise SystemExit(f"sandbox: {what}: {os.strerror(code)} (this kernel may lack it)")


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    names = Path(argv[1]).read_text().split()
    libc = ctypes.CDLL(None, use_errno=True)
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(libc, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, "PR_SET_MDWE")
    syscall_filter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in names:
        try:
            syscall_filter.add_rule(seccomp.ALLOW, name)
        except RuntimeError:  # a name this kernel and libseccomp do not know
            continue
    syscall_filter.load()
    os.execvp(argv[3], argv[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
