"""The path sandbox of the file-reaching tool groups (``filesystem``, ``security``): every path a tool
touches resolves, symlinks followed, to a place inside one of the allowed roots, or it is refused.

Two layers, because a check on a path name alone is a check of the past (a directory swapped for a
symlink between the check and the open would escape it):

1. :meth:`Sandbox.resolve` turns what the caller wrote (absolute, or relative to the first root) into a
   real path (``os.path.realpath``: ``..`` and every symlink resolved) and refuses it unless it is a root
   or lies under one. A symlink pointing out, a symlinked parent directory and ``..`` are all caught here.
2. :meth:`Sandbox.open` and :meth:`Sandbox.open_parent` never open that path by name: they open the root
   and then each component below it with ``O_NOFOLLOW`` relative to the directory before it (``openat``).
   A component that has become a symlink since step 1 fails to open (``ELOOP``/``ENOTDIR``) and is
   refused, so what is read, written or renamed is always the object inside the root that step 1 saw.
   :meth:`Sandbox.walk` lists trees the same way and never descends into a symlink;
   :meth:`Sandbox.write_atomic` and :meth:`Sandbox.rename` work on the opened parent directories.

What is left: a directory renamed (not symlinked) out of a root while a tool holds it open; that needs
write access outside the roots, which the sandbox does not guard against.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from llmhost.errors import ConflictError, NotFoundError, RefusedError, RequestError

__all__ = ["Sandbox", "WalkedDir", "os_error"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def os_error(exc: OSError, shown: str) -> Exception:
    """The llmhost error for an OS error on the path the caller wrote as ``shown`` (no file contents,
    no resolved path outside the roots, only the path and the OS's reason)."""
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(f"no such file or directory: {shown}", param="path")
    if isinstance(exc, PermissionError):
        return RefusedError(f"permission denied: {shown}")
    if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's answer to O_NOFOLLOW on a link
        return RefusedError(f"path changed into a symlink while being opened: {shown}")
    reason = exc.strerror or type(exc).__name__
    return RequestError(f"{shown}: {reason.lower()}", param="path")


def _open_at(name: str, dir_fd: int, flags: int = _DIR_FLAGS, mode: int = 0o777) -> int:
    """Open ``name`` in ``dir_fd`` without following a symlink there. Linux answers a symlink opened
    with ``O_DIRECTORY`` by ENOTDIR, not ELOOP: that case is reported as ELOOP (a symlink) too."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except NotADirectoryError as exc:
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, "is a symlink") from exc
        raise


class WalkedDir:
    """One directory met by :meth:`Sandbox.walk`: its real path, its open descriptor (valid only until
    the walk moves on) and its entries, sorted by name, as ``os.DirEntry`` (types from ``lstat``)."""

    __slots__ = ("entries", "fd", "path")

    def __init__(self, path: Path, fd: int, entries: list[os.DirEntry[str]]) -> None:
        self.path = path
        self.fd = fd
        self.entries = entries


class Sandbox:
    """Paths confined to ``roots`` (each resolved once, here). With no roots every path is refused."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots: tuple[Path, ...] = tuple(Path(os.path.realpath(root)) for root in roots)

    def root_of(self, real: Path) -> Path | None:
        """The root ``real`` (a resolved path) lies in, the deepest when roots nest; None when none."""
        inside = [root for root in self.roots if real.is_relative_to(root)]
        return max(inside, key=lambda root: len(root.parts)) if inside else None

    def is_root(self, real: Path) -> bool:
        return real in self.roots

    def holds_root(self, real: Path) -> bool:
        """Whether ``real`` is a root or a directory above one (moving it would move a root)."""
        return any(root.is_relative_to(real) for root in self.roots)

    def _candidate(self, path: str) -> Path:
        if not self.roots:
            raise RefusedError("no roots are configured for this tool group")
        if not path or "\x00" in path:
            raise RequestError("path must be a non-empty string without NUL characters", param="path")
        given = Path(path)
        return given if given.is_absolute() else self.roots[0] / given

    def resolve(self, path: str, *, must_exist: bool = True) -> Path:
        """The real path of ``path`` (absolute, or relative to the first root), every symlink followed.

        Refuses (:class:`RefusedError`) a result outside every root, whether ``..``, an absolute path,
        a symlink or a symlinked parent led there. With ``must_exist`` a missing path is a
        :class:`NotFoundError`; without it the path may be new, and its nearest existing ancestor is
        what had to resolve inside a root."""
        real = Path(os.path.realpath(self._candidate(path)))
        if self.root_of(real) is None:
            raise RefusedError(f"path is outside the allowed roots: {path}")
        if must_exist and not os.path.lexists(real):
            raise NotFoundError(f"no such file or directory: {path}", param="path")
        return real

    def resolve_entry(self, path: str, *, must_exist: bool = True) -> Path:
        """Like :meth:`resolve`, but the last component is kept as named, not followed: a symlink there
        stands for itself (what a move moves). Its parent must resolve inside a root; a symlink as the
        last component must itself resolve inside one (a link pointing out is refused)."""
        candidate = self._candidate(path)
        if candidate.name in ("", ".", ".."):
            return self.resolve(path, must_exist=must_exist)
        real = Path(os.path.realpath(candidate.parent)) / candidate.name
        if self.root_of(real.parent) is None and not self.is_root(real):
            raise RefusedError(f"path is outside the allowed roots: {path}")
        if os.path.islink(real) and self.root_of(Path(os.path.realpath(real))) is None:
            raise RefusedError(f"symlink points outside the allowed roots: {path}")
        if must_exist and not os.path.lexists(real):
            raise NotFoundError(f"no such file or directory: {path}", param="path")
        return real

    def _open_root_dir(self, real: Path) -> tuple[int, list[str]]:
        """An open descriptor of the root holding ``real`` and the components from there to ``real``."""
        root = self.root_of(real)
        if root is None:  # resolve() was skipped: never open such a path
            raise RefusedError("path is outside the allowed roots")
        return os.open(root, _DIR_FLAGS), list(real.relative_to(root).parts)

    def _descend(self, fd: int, parts: Sequence[str], *, create: bool) -> int:
        """Walk ``parts`` below the directory ``fd`` (which this takes over) with ``O_NOFOLLOW``, creating
        missing directories when ``create``; returns the last directory's descriptor."""
        try:
            for part in parts:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                child = _open_at(part, fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open(self, real: Path, flags: int, mode: int = 0o666, *, shown: str = "") -> int:
        """A descriptor of ``real`` (a path from :meth:`resolve`) opened with ``flags`` plus
        ``O_NOFOLLOW``, reached component by component from its root; OS errors become llmhost ones."""
        shown = shown or str(real)
        try:
            fd, parts = self._open_root_dir(real)
            if not parts:
                os.close(fd)
                return os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
            fd = self._descend(fd, parts[:-1], create=False)
            try:
                return _open_at(parts[-1], fd, flags, mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise os_error(exc, shown) from exc

    def open_parent(self, real: Path, *, create: bool = False, shown: str = "") -> tuple[int, str]:
        """The open parent directory of ``real`` and its last component: what ``*at`` calls (rename,
        create, stat) take. ``create`` makes missing parent directories on the way, each created and
        entered relative to the one before, so none lands outside the root."""
        shown = shown or str(real)
        if self.is_root(real):
            raise RefusedError(f"a root itself cannot be replaced or moved: {shown}")
        try:
            fd, parts = self._open_root_dir(real)
            return self._descend(fd, parts[:-1], create=create), parts[-1]
        except OSError as exc:
            raise os_error(exc, shown) from exc

    def open_file(self, real: Path, *, shown: str = "") -> int:
        """A read descriptor of the regular file ``real``; anything else (directory, FIFO, device) is a
        :class:`RequestError`. ``O_NONBLOCK`` keeps a FIFO from blocking the open."""
        fd = self.open(real, os.O_RDONLY | os.O_NONBLOCK, shown=shown)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RequestError(f"not a regular file: {shown or real}", param="path")
        return fd

    def walk(self, real: Path, *, shown: str = "") -> Iterator[WalkedDir]:
        """Every directory of the tree at ``real`` (a directory from :meth:`resolve`), top first, then
        depth first by name. Symlinks are listed but never entered; a subdirectory that cannot be opened
        (gone, no permission, swapped for a symlink) is skipped."""
        top = self.open(real, _DIR_FLAGS, shown=shown)
        stack: list[tuple[int, Path, Iterator[str]]] = []
        fd, path = top, real
        try:
            while True:
                with os.scandir(fd) as scan:
                    entries = sorted(scan, key=lambda e: e.name)
                yield WalkedDir(path, fd, entries)
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
                stack.append((fd, path, iter(names)))
                fd = -1
                while stack and fd < 0:
                    parent_fd, parent_path, pending = stack[-1]
                    name = next(pending, None)
                    if name is None:
                        os.close(parent_fd)
                        stack.pop()
                        continue
                    try:
                        fd, path = os.open(name, _DIR_FLAGS, dir_fd=parent_fd), parent_path / name
                    except OSError:
                        fd = -1
                if fd < 0:
                    return
        finally:
            for parent_fd, _, _ in stack:
                os.close(parent_fd)
            if fd >= 0:  # the directory being yielded when the walk was closed
                os.close(fd)

    def entry_stat(self, dir_fd: int, name: str, *, shown: str) -> os.stat_result | None:
        """``lstat`` of ``name`` in the open directory ``dir_fd``; None when there is none."""
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, shown) from exc

    def write_atomic(
        self, real: Path, data: bytes, *, overwrite: bool, create_dirs: bool, shown: str
    ) -> bool:
        """Write ``data`` as the file ``real`` (from :meth:`resolve`): a new temporary file in the same
        directory, synced, then renamed over the target, so readers see the old or the new content and
        never a part. A replaced file keeps its permission bits. Without ``overwrite`` the temporary
        file is hard-linked to the name instead, which fails (:class:`ConflictError`) if the name exists,
        even if it appeared a moment ago. Returns whether the file is new."""
        if self.is_root(real):
            raise RequestError(f"is a directory: {shown}", param="path")
        dir_fd, name = self.open_parent(real, create=create_dirs, shown=shown)
        temp = f".llmhost-{secrets.token_hex(8)}.tmp"
        try:
            existing = self.entry_stat(dir_fd, name, shown=shown)
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise RequestError(f"is a directory: {shown}", param="path")
            if existing is not None and not overwrite:
                raise ConflictError(f"file exists (pass overwrite=true to replace it): {shown}")
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temp, flags, 0o666, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if existing is not None and stat.S_ISREG(existing.st_mode):
                    os.fchmod(fd, stat.S_IMODE(existing.st_mode))
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            return existing is None
        except FileExistsError as exc:
            raise ConflictError(f"file exists (pass overwrite=true to replace it): {shown}") from exc
        except OSError as exc:
            raise os_error(exc, shown) from exc
        finally:
            with contextlib.suppress(OSError):  # gone after a rename; still there after a link
                os.unlink(temp, dir_fd=dir_fd)
            os.close(dir_fd)

    def rename(self, src: Path, dst: Path, *, overwrite: bool, create_dirs: bool, shown: str) -> bool:
        """Move the entry ``src`` to ``dst`` (both from :meth:`resolve_entry`) with one rename between
        the two opened parent directories. Refuses moving or replacing a root or a directory above one,
        and a directory into itself. Without ``overwrite`` an existing ``dst`` is a
        :class:`ConflictError`; a non-directory is then hard-linked and unlinked, so a destination that
        appears after the check is not replaced either (a directory is renamed after the check).
        Returns whether an existing destination was replaced."""
        if self.holds_root(src) or self.holds_root(dst):
            raise RefusedError("a root, or a directory holding one, cannot be moved or replaced")
        if src == dst:
            raise RequestError("source and destination are the same path", param="destination")
        if dst.is_relative_to(src):
            raise RequestError("cannot move a directory into itself", param="destination")
        src_fd, src_name = self.open_parent(src, shown=shown)
        try:
            dst_fd, dst_name = self.open_parent(dst, create=create_dirs, shown=shown)
            try:
                existing = self.entry_stat(dst_fd, dst_name, shown=shown)
                if existing is not None and not overwrite:
                    raise ConflictError(f"destination exists (pass overwrite=true to replace it): {shown}")
                self._rename_at(src_fd, src_name, dst_fd, dst_name, overwrite=overwrite, shown=shown)
                return existing is not None
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _rename_at(
        self, src_fd: int, src: str, dst_fd: int, dst: str, *, overwrite: bool, shown: str
    ) -> None:
        try:
            source = self.entry_stat(src_fd, src, shown=shown)
            if source is None:
                raise NotFoundError(f"no such file or directory: {shown}", param="source")
            if not overwrite and not stat.S_ISDIR(source.st_mode):
                try:
                    os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                    os.unlink(src, dir_fd=src_fd)
                    return
                except FileExistsError as exc:
                    raise ConflictError(
                        f"destination exists (pass overwrite=true to replace it): {shown}"
                    ) from exc
                except OSError as exc:  # no hard links here (or not allowed): rename after the check
                    if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                        raise
            os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise RequestError("cannot move across filesystems", param="destination") from exc
            raise os_error(exc, shown) from exc
