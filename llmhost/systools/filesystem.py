"""The ``filesystem`` group (scope ``tools:filesystem``): list, read, search and stat files under the
allowed roots, and, when the group is writable, write and move them.

Every path goes through :class:`~llmhost.systools.paths.Sandbox` (resolved inside a root, then opened
component by component with ``O_NOFOLLOW``). fs_read returns text only: a binary file (a NUL byte in its
first 8 KiB or in the part read) is refused with a message pointing to fs_stat. Writes are atomic: the
content goes to a temporary file in the target's directory, is synced, then renamed over the target.
fs_search's `regex` is Python's ``re`` run line by line on files up to max_read_bytes: it has no time
limit, so a pathological pattern can hold its worker thread (plain substrings cannot).
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO, ClassVar, Literal

from pydantic import BaseModel, Field

from llmhost.errors import RefusedError, RequestError
from llmhost.systools.base import SystemTool, ToolGroup
from llmhost.systools.paths import Sandbox, os_error
from llmhost.systools.settings import FilesystemSettings

__all__ = ["FilesystemTools"]

_SNIFF = 8192  # bytes looked at for a NUL byte (binary files)
_LINE_PREVIEW = 240  # characters of a matching line fs_search shows
_CHUNK = 1024 * 1024
_BINARY = "binary file; fs_read returns text only (fs_stat gives its size and sha256): {}"

EntryType = Literal["file", "directory", "symlink", "other"]

PathArg = Annotated[
    str, Field(description="A path inside an allowed root: absolute, or relative to the first root.")
]
DirArg = Annotated[
    str, Field(description="A directory inside an allowed root: absolute, or relative to the first root.")
]
GlobArg = Annotated[
    str | None,
    Field(description="A glob (`*.py`, `src/*/test_*`): on the name, or on the relative path if it has a /."),
]
MaxResultsArg = Annotated[int | None, Field(ge=1, description="Return at most this many (capped).")]
CreateDirsArg = Annotated[bool, Field(description="Create missing parent directories.")]


class FsEntry(BaseModel):
    name: str = Field(description="Path relative to the listed directory (the name when not recursive).")
    path: str = Field(description="Absolute path, usable in the other fs_* tools.")
    type: EntryType = Field(description="Kind of entry; symlinks are reported, not followed.")
    size: int | None = Field(description="Size in bytes (files and symlinks), None for directories.")
    modified: str = Field(description="Last modification time, ISO 8601 in UTC.")


class FsListResult(BaseModel):
    path: str = Field(description="The directory listed (resolved).")
    entries: list[FsEntry] = Field(description="Entries sorted by name, directories before their contents.")
    truncated: bool = Field(description="True when more entries matched than were returned.")


class FsReadResult(BaseModel):
    path: str = Field(description="The file read (resolved).")
    text: str = Field(description="The text read (UTF-8; undecodable bytes become U+FFFD).")
    size: int = Field(description="Size of the whole file in bytes.")
    offset: int = Field(description="Byte offset where the returned text starts.")
    bytes_read: int = Field(description="Bytes of the file the text covers.")
    start_line: int | None = Field(None, description="First line returned (line reads only).")
    end_line: int | None = Field(None, description="Last line returned (line reads only).")
    truncated: bool = Field(description="True when the range asked for was cut at max_read_bytes.")
    next_offset: int | None = Field(description="Offset to continue from when truncated, else None.")


class FsSearchMatch(BaseModel):
    path: str = Field(description="Absolute path of the matching file.")
    line: int | None = Field(None, description="1-based line of a content match (None: name match only).")
    column: int | None = Field(None, description="1-based character column where the match starts.")
    text: str | None = Field(None, description="The matching line, cut to 240 characters.")


class FsSearchResult(BaseModel):
    path: str = Field(description="The directory searched (resolved).")
    matches: list[FsSearchMatch] = Field(description="Matches, file by file in name order.")
    files_scanned: int = Field(description="Files looked at (by name; the content of those that matched).")
    files_skipped: int = Field(description="Files whose content was not searched (binary, too large).")
    truncated: bool = Field(description="True when max_results or max_search_files cut the search.")


class FsStatResult(BaseModel):
    path: str = Field(description="The path described (resolved: a symlink's target).")
    type: EntryType = Field(description="Kind of the resolved object.")
    is_symlink: bool = Field(description="Whether the path given is itself a symlink (inside the roots).")
    size: int = Field(description="Size in bytes.")
    modified: str = Field(description="Last modification time, ISO 8601 in UTC.")
    mode: str = Field(description="Permissions as `ls -l` shows them, e.g. `-rw-r--r--`.")
    mode_octal: str = Field(description="Permission bits in octal, e.g. `0644`.")
    sha256: str | None = Field(None, description="Hex SHA-256 of a file's content, when asked for.")
    note: str | None = Field(None, description="Why sha256 is missing although it was asked for.")


class FsWriteResult(BaseModel):
    path: str = Field(description="The file written (resolved).")
    bytes_written: int = Field(description="Bytes written (the content encoded as UTF-8).")
    created: bool = Field(description="True when the file did not exist before.")


class FsMoveResult(BaseModel):
    source: str = Field(description="Where the entry was (resolved parent + its name).")
    destination: str = Field(description="Where it is now.")
    overwritten: bool = Field(description="True when an existing destination was replaced.")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _kind(mode: int) -> EntryType:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    return "file" if stat.S_ISREG(mode) else "other"


def _glob_matches(pattern: str, rel: str, case_sensitive: bool = True) -> bool:
    """``pattern`` against the name (no ``/`` in it) or the relative path (with one)."""
    subject = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    if not case_sensitive:
        return fnmatch.fnmatchcase(subject.lower(), pattern.lower())
    return fnmatch.fnmatchcase(subject, pattern)


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data


class FilesystemTools(ToolGroup):
    """Files under the configured roots; fs_write and fs_move exist only when ``writable``."""

    name: ClassVar[str] = "filesystem"
    scope: ClassVar[str] = "tools:filesystem"

    def __init__(self, settings: FilesystemSettings) -> None:
        self.settings = settings
        self.sandbox = Sandbox(settings.roots)

    def tools(self) -> list[SystemTool]:
        tools = [
            SystemTool("fs_list", self.fs_list, "List a directory"),
            SystemTool("fs_read", self.fs_read, "Read a text file"),
            SystemTool("fs_search", self.fs_search, "Search files by name or content"),
            SystemTool("fs_stat", self.fs_stat, "Describe a file or directory"),
        ]
        if self.settings.writable:
            tools += [
                SystemTool("fs_write", self.fs_write, "Write a file", read_only=False, destructive=True),
                SystemTool("fs_move", self.fs_move, "Move or rename", read_only=False, destructive=True),
            ]
        return tools

    def _cap(self, asked: int | None) -> int:
        return min(asked or self.settings.max_results, self.settings.max_results)

    def fs_list(
        self,
        path: DirArg = ".",
        glob: GlobArg = None,
        recursive: Annotated[
            bool, Field(description="Also list subdirectories (symlinks not entered).")
        ] = False,
        max_results: MaxResultsArg = None,
    ) -> FsListResult:
        """List the entries of a directory inside the allowed roots: name, absolute path, type, size and
        modification time, sorted by name. With `recursive`, the whole tree below it (symlinked
        directories are shown but not entered). `glob` filters; the result is capped and says so."""
        real = self.sandbox.resolve(path)
        cap = self._cap(max_results)
        entries: list[FsEntry] = []
        truncated = False
        seen = 0
        for walked in self.sandbox.walk(real, shown=path):
            for entry in walked.entries:
                seen += 1
                if seen > self.settings.max_search_files:  # a glob that matches little in a huge tree
                    truncated = True
                    break
                rel = (walked.path / entry.name).relative_to(real).as_posix()
                if glob is not None and not _glob_matches(glob, rel):
                    continue
                if len(entries) >= cap:
                    truncated = True
                    break
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                kind = _kind(st.st_mode)
                size = None if kind == "directory" else st.st_size
                full = str(walked.path / entry.name)
                entries.append(FsEntry(name=rel, path=full, type=kind, size=size, modified=_iso(st.st_mtime)))
            if truncated or not recursive:
                break
        return FsListResult(path=str(real), entries=entries, truncated=truncated)

    def fs_read(
        self,
        path: PathArg,
        offset: Annotated[int, Field(ge=0, description="Byte offset to start at.")] = 0,
        length: Annotated[int | None, Field(ge=1, description="Bytes to read at most.")] = None,
        start_line: Annotated[
            int | None, Field(ge=1, description="First line, 1-based (not with offset).")
        ] = None,
        end_line: Annotated[int | None, Field(ge=1, description="Last line, inclusive.")] = None,
    ) -> FsReadResult:
        """Read a text file inside the allowed roots, as UTF-8. Give a byte range (`offset`, `length`)
        or a line range (`start_line`, `end_line`), or neither for the whole file. At most
        max_read_bytes come back: a cut read says `truncated` and the `next_offset` to go on from.
        Binary files are refused (use fs_stat for their size and sha256)."""
        line_read = start_line is not None or end_line is not None
        if line_read and (offset or length is not None):
            raise RequestError(
                "give a byte range (offset/length) or a line range, not both", param="start_line"
            )
        if start_line is not None and end_line is not None and end_line < start_line:
            raise RequestError("end_line is before start_line", param="end_line")
        real = self.sandbox.resolve(path)
        fd = self.sandbox.open_file(real, shown=path)
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if _is_binary(os.pread(handle.fileno(), _SNIFF, 0)):
                raise RequestError(_BINARY.format(path), param="path")
            cap = self.settings.max_read_bytes
            first = last = None
            if line_read:
                first = start_line or 1
                offset, data, last, truncated = self._read_lines(handle, first, end_line, cap)
            else:
                handle.seek(offset)
                want = cap if length is None else min(length, cap)
                data = handle.read(want)
                truncated = len(data) == want and (length is None or length > cap) and bool(handle.read(1))
        if _is_binary(data):
            raise RequestError(_BINARY.format(path), param="path")
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = decoder.decode(data, final=not truncated)
        used = len(data) - len(decoder.getstate()[0])  # a character cut at the cap waits for the next read
        return FsReadResult(
            path=str(real),
            text=text,
            size=size,
            offset=offset,
            bytes_read=used,
            start_line=first,
            end_line=last,
            truncated=truncated,
            next_offset=offset + used if truncated else None,
        )

    @staticmethod
    def _read_lines(
        handle: BinaryIO, first: int, last: int | None, cap: int
    ) -> tuple[int, bytes, int | None, bool]:
        """(offset of line ``first``, the bytes of lines ``first``..``last`` up to ``cap``, the last line
        returned, whether the cap cut them). Lines are read in bounded pieces, never the whole file."""
        offset, number = 0, 0
        while number < first - 1 and (piece := handle.readline(_CHUNK)):
            offset += len(piece)
            number += piece.endswith(b"\n")
        chunks: list[bytes] = []
        total, returned = 0, None
        while last is None or number < last:
            line = handle.readline(cap - total + 1)
            if not line:
                return offset, b"".join(chunks), returned, False
            if total + len(line) > cap:
                chunks.append(line[: cap - total])
                return offset, b"".join(chunks), returned, True
            chunks.append(line)
            total += len(line)
            number += 1
            returned = number
        return offset, b"".join(chunks), returned, False

    def fs_search(
        self,
        path: DirArg = ".",
        name_glob: GlobArg = None,
        contains: Annotated[str | None, Field(description="Only files with a line containing this.")] = None,
        regex: Annotated[bool, Field(description="`contains` is a Python regular expression.")] = False,
        case_sensitive: Annotated[bool, Field(description="Match names and text case-sensitively.")] = True,
        max_results: MaxResultsArg = None,
    ) -> FsSearchResult:
        """Find files below a directory inside the allowed roots by name (`name_glob`) and/or content
        (`contains`, a substring or, with `regex`, a regular expression matched line by line). Content
        matches give the line number, column and the line itself. Symlinks are not followed; binary
        files and files over max_read_bytes are not searched inside. Results are capped."""
        if name_glob is None and not contains:
            raise RequestError("give name_glob, contains or both", param="contains")
        finder = None
        if contains:
            if len(contains) > 1000:
                raise RequestError("contains is longer than 1000 characters", param="contains")
            flags = 0 if case_sensitive else re.IGNORECASE
            try:
                finder = re.compile(contains if regex else re.escape(contains), flags)
            except re.error as exc:
                raise RequestError(f"not a valid regular expression: {exc}", param="contains") from exc
        real = self.sandbox.resolve(path)
        cap = self._cap(max_results)
        matches: list[FsSearchMatch] = []
        scanned = skipped = 0
        truncated = False
        for walked in self.sandbox.walk(real, shown=path):
            for entry in walked.entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if scanned >= self.settings.max_search_files:
                    truncated = True
                    break
                scanned += 1
                rel = (walked.path / entry.name).relative_to(real).as_posix()
                if name_glob is not None and not _glob_matches(name_glob, rel, case_sensitive):
                    continue
                if len(matches) >= cap:
                    truncated = True
                    break
                full = str(walked.path / entry.name)
                if finder is None:
                    matches.append(FsSearchMatch(path=full))
                    continue
                found = self._grep(walked.fd, entry.name, finder)
                if found is None:
                    skipped += 1
                    continue
                room = cap - len(matches)
                for number, column, text in found[:room]:
                    matches.append(FsSearchMatch(path=full, line=number, column=column, text=text))
                if len(found) > room:
                    truncated = True
                    break
            if truncated:
                break
        return FsSearchResult(
            path=str(real), matches=matches, files_scanned=scanned, files_skipped=skipped, truncated=truncated
        )

    def _grep(self, dir_fd: int, name: str, finder: re.Pattern[str]) -> list[tuple[int, int, str]] | None:
        """(line, column, line text) of each line of the file where ``finder`` matches; None when the
        file is not searched (binary, larger than max_read_bytes, unreadable)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.settings.max_read_bytes:
                return None
            data = handle.read(self.settings.max_read_bytes)
        if _is_binary(data[:_SNIFF]) or _is_binary(data):
            return None
        found = []
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if (hit := finder.search(line)) is not None:
                found.append((number, hit.start() + 1, line[:_LINE_PREVIEW]))
        return found

    def fs_stat(
        self,
        path: PathArg,
        sha256: Annotated[bool, Field(description="Also compute the SHA-256 of a file's content.")] = False,
    ) -> FsStatResult:
        """Describe a file or directory inside the allowed roots: type, size, modification time and
        permissions; with `sha256`, the hash of a file's content (up to max_hash_bytes). A symlink is
        described by its target (and `is_symlink` says the path was one)."""
        real = self.sandbox.resolve(path)
        is_link = os.path.islink(self.sandbox.resolve_entry(path))
        if self.sandbox.is_root(real):
            try:
                st = os.stat(real)
            except OSError as exc:
                raise os_error(exc, path) from exc
        else:
            dir_fd, name = self.sandbox.open_parent(real, shown=path)
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as exc:
                raise os_error(exc, path) from exc
            finally:
                os.close(dir_fd)
        digest = note = None
        if sha256 and not stat.S_ISREG(st.st_mode):
            note = "not a regular file"
        elif sha256 and st.st_size > self.settings.max_hash_bytes:
            note = "file is larger than max_hash_bytes"
        elif sha256:
            digest, note = self._sha256(real, path)
        return FsStatResult(
            path=str(real),
            type=_kind(st.st_mode),
            is_symlink=is_link,
            size=st.st_size,
            modified=_iso(st.st_mtime),
            mode=stat.filemode(st.st_mode),
            mode_octal=f"{stat.S_IMODE(st.st_mode):04o}",
            sha256=digest,
            note=note,
        )

    def _sha256(self, real: Path, shown: str) -> tuple[str | None, str | None]:
        """The digest, reading at most max_hash_bytes (a file that grew past it gets a note instead)."""
        hasher = hashlib.sha256()
        left = self.settings.max_hash_bytes
        with os.fdopen(self.sandbox.open_file(real, shown=shown), "rb") as handle:
            while chunk := handle.read(min(_CHUNK, left + 1)):
                left -= len(chunk)
                if left < 0:
                    return None, "file is larger than max_hash_bytes"
                hasher.update(chunk)
        return hasher.hexdigest(), None

    def _require_writable(self) -> None:
        if not self.settings.writable:
            raise RefusedError("the filesystem tools are read-only here (mcp.filesystem.writable is false)")

    def fs_write(
        self,
        path: PathArg,
        content: Annotated[str, Field(description="The whole new content of the file (written as UTF-8).")],
        overwrite: Annotated[bool, Field(description="Replace the file if it exists (else refuse).")] = True,
        create_dirs: CreateDirsArg = False,
    ) -> FsWriteResult:
        """Create or replace a text file inside the allowed roots, atomically: readers see the old file
        or the new one, never a part. An existing file keeps its permissions. Content over
        max_write_bytes is refused; so is a path that is a directory."""
        self._require_writable()
        data = content.encode("utf-8")
        if len(data) > self.settings.max_write_bytes:
            raise RequestError(
                f"content is {len(data)} bytes, over max_write_bytes ({self.settings.max_write_bytes})",
                param="content",
            )
        real = self.sandbox.resolve(path, must_exist=False)
        created = self.sandbox.write_atomic(
            real, data, overwrite=overwrite, create_dirs=create_dirs, shown=path
        )
        return FsWriteResult(path=str(real), bytes_written=len(data), created=created)

    def fs_move(
        self,
        source: Annotated[str, Field(description="Entry to move (a symlink there is moved itself).")],
        destination: Annotated[str, Field(description="Its new path, inside the allowed roots as well.")],
        overwrite: Annotated[
            bool, Field(description="Replace an existing destination (else refuse).")
        ] = False,
        create_dirs: CreateDirsArg = False,
    ) -> FsMoveResult:
        """Move or rename a file or directory within the allowed roots (one atomic rename on the same
        filesystem). An existing destination is refused unless `overwrite`; a root, or a directory
        holding one, cannot be moved or replaced; a directory cannot move into itself."""
        self._require_writable()
        src = self.sandbox.resolve_entry(source)
        dst = self.sandbox.resolve_entry(destination, must_exist=False)
        shown = f"{source} -> {destination}"
        replaced = self.sandbox.rename(src, dst, overwrite=overwrite, create_dirs=create_dirs, shown=shown)
        return FsMoveResult(source=str(src), destination=str(dst), overwritten=replaced)
