"""The filesystem tool group on real files: every tool's happy path, its caps, and the sandbox (``..``,
absolute paths, symlinks out, symlinked parents, paths swapped for symlinks after the check)."""

from __future__ import annotations

import hashlib
import inspect
import os
import stat
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from llmhost.errors import ConflictError, NotFoundError, RefusedError, RequestError
from llmhost.systools.filesystem import FilesystemTools
from llmhost.systools.paths import Sandbox
from llmhost.systools.settings import FilesystemSettings

OUTSIDE_TEXT = "outside-secret-content"


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with a.txt, notes.md, sub/b.txt, sub/deep/c.py and outside/ (beside root) with secret.txt."""
    root = tmp_path / "root"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\nbeta\ngamma\n")
    (root / "notes.md").write_text("# Notes\nTODO: write more\n")
    (root / "sub" / "b.txt").write_text("one\ntwo TODO\nthree\n")
    (root / "sub" / "deep" / "c.py").write_text("print('todo')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(OUTSIDE_TEXT + " TODO\n")
    return {"root": root, "outside": outside}


def make_tools(root: Path, **overrides: Any) -> FilesystemTools:
    return FilesystemTools(FilesystemSettings(enabled=True, roots=[root], writable=True, **overrides))


@pytest.fixture
def fs(tree: dict[str, Path]) -> FilesystemTools:
    return make_tools(tree["root"])


# ----- the group's shape -----------------------------------------------------------------------------
def test_write_tools_exist_only_when_writable(tree: dict[str, Path]) -> None:
    read_only = FilesystemTools(FilesystemSettings(roots=[tree["root"]]))
    assert [t.name for t in read_only.tools()] == ["fs_list", "fs_read", "fs_search", "fs_stat"]
    writable = make_tools(tree["root"])
    names = {t.name: t for t in writable.tools()}
    assert set(names) == {"fs_list", "fs_read", "fs_search", "fs_stat", "fs_write", "fs_move"}
    assert not names["fs_write"].read_only and names["fs_write"].destructive
    assert names["fs_read"].read_only and not names["fs_read"].open_world
    with pytest.raises(RefusedError, match="read-only"):
        read_only.fs_write(path="new.txt", content="x")
    with pytest.raises(RefusedError, match="read-only"):
        read_only.fs_move(source="a.txt", destination="b.txt")
    assert not (tree["root"] / "new.txt").exists()


def test_every_tool_describes_itself_and_each_parameter(fs: FilesystemTools) -> None:
    for tool in fs.tools():
        assert tool.name.startswith("fs_") and inspect.getdoc(tool.func)
        hints = typing.get_type_hints(tool.func, include_extras=True)
        assert issubclass(hints.pop("return"), BaseModel)
        for name, hint in hints.items():
            infos = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, FieldInfo)]
            assert infos and infos[0].description, f"{tool.name}.{name} has no description"


def test_no_roots_refuses_everything(tmp_path: Path) -> None:
    tools = FilesystemTools(FilesystemSettings(enabled=True))
    with pytest.raises(RefusedError, match="no roots"):
        tools.fs_list(path=str(tmp_path))


# ----- fs_list ----------------------------------------------------------------------------------------
def test_list_gives_sorted_entries_with_types(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    result = fs.fs_list()
    assert result.path == str(tree["root"].resolve())
    assert [(e.name, e.type) for e in result.entries] == [
        ("a.txt", "file"),
        ("notes.md", "file"),
        ("sub", "directory"),
    ]
    first = result.entries[0]
    assert first.path == str(tree["root"].resolve() / "a.txt") and first.size == len("alpha\nbeta\ngamma\n")
    assert result.entries[2].size is None and not result.truncated


def test_list_recursive_with_glob_does_not_enter_symlinked_directories(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    (tree["root"] / "out_link").symlink_to(tree["outside"], target_is_directory=True)
    everything = fs.fs_list(recursive=True)
    names = [e.name for e in everything.entries]
    assert names == ["a.txt", "notes.md", "out_link", "sub", "sub/b.txt", "sub/deep", "sub/deep/c.py"]
    assert {e.name: e.type for e in everything.entries}["out_link"] == "symlink"
    assert [e.name for e in fs.fs_list(recursive=True, glob="*.txt").entries] == ["a.txt", "sub/b.txt"]
    assert [e.name for e in fs.fs_list(recursive=True, glob="sub/*/*.py").entries] == ["sub/deep/c.py"]
    assert [e.name for e in fs.fs_list(path="sub", glob="b*").entries] == ["b.txt"]


def test_list_is_capped_by_the_request_and_by_max_results(tree: dict[str, Path]) -> None:
    tools = make_tools(tree["root"], max_results=3)
    capped = tools.fs_list(recursive=True)
    assert len(capped.entries) == 3 and capped.truncated
    assert len(tools.fs_list(recursive=True, max_results=1000).entries) == 3  # the setting wins
    two = tools.fs_list(recursive=True, max_results=2)
    assert [e.name for e in two.entries] == ["a.txt", "notes.md"] and two.truncated
    exact = tools.fs_list()  # three entries at the top: all fit, nothing is cut
    assert len(exact.entries) == 3 and not exact.truncated


def test_list_of_a_file_is_a_request_error(fs: FilesystemTools) -> None:
    with pytest.raises(RequestError, match="not a directory"):
        fs.fs_list(path="a.txt")


# ----- fs_read ----------------------------------------------------------------------------------------
def test_read_whole_file_byte_range_and_line_range(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    whole = fs.fs_read(path="a.txt")
    assert whole.text == "alpha\nbeta\ngamma\n" and whole.size == 17 and not whole.truncated
    assert whole.next_offset is None and whole.path == str(tree["root"].resolve() / "a.txt")
    part = fs.fs_read(path=str(tree["root"] / "a.txt"), offset=6, length=4)
    assert (part.text, part.offset, part.bytes_read, part.truncated) == ("beta", 6, 4, False)
    lines = fs.fs_read(path="a.txt", start_line=2, end_line=3)
    assert (lines.text, lines.start_line, lines.end_line, lines.offset) == ("beta\ngamma\n", 2, 3, 6)
    tail = fs.fs_read(path="a.txt", start_line=3)
    assert (tail.text, tail.end_line) == ("gamma\n", 3)
    assert fs.fs_read(path="sub/../a.txt").text == whole.text  # `..` that stays inside is fine


def test_read_is_cut_at_max_read_bytes_and_continues_without_splitting_characters(
    tree: dict[str, Path],
) -> None:
    text = "é" * 10 + "end"  # 2 bytes each: a cap of 5 bytes falls inside a character
    (tree["root"] / "utf8.txt").write_text(text, encoding="utf-8")
    tools = make_tools(tree["root"], max_read_bytes=5)
    pieces: list[str] = []
    offset: int | None = 0
    while offset is not None:
        result = tools.fs_read(path="utf8.txt", offset=offset)
        assert result.bytes_read <= 5 and "\ufffd" not in result.text
        pieces.append(result.text)
        offset = result.next_offset
        assert result.truncated == (offset is not None)
    assert "".join(pieces) == text and pieces[0] == "éé"
    lines = tools.fs_read(path="a.txt", start_line=1)
    assert (lines.text, lines.end_line, lines.truncated, lines.next_offset) == ("alpha", None, True, 5)


def test_read_refuses_binary_files_directories_fifos_and_mixed_ranges(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    (tree["root"] / "blob.bin").write_bytes(b"\x7fELF\x00\x01\x02")
    with pytest.raises(RequestError, match="binary file"):
        fs.fs_read(path="blob.bin")
    with pytest.raises(RequestError, match="not a regular file"):
        fs.fs_read(path="sub")
    os.mkfifo(tree["root"] / "pipe")
    with pytest.raises(RequestError, match="not a regular file"):  # and the open does not block
        fs.fs_read(path="pipe")
    with pytest.raises(RequestError, match="not both"):
        fs.fs_read(path="a.txt", offset=2, start_line=1)
    with pytest.raises(NotFoundError):
        fs.fs_read(path="missing.txt")


# ----- the sandbox ------------------------------------------------------------------------------------
ESCAPES = [
    "../outside/secret.txt",
    "sub/../../outside/secret.txt",
    "{outside}/secret.txt",
    "out_link/secret.txt",
]


@pytest.mark.parametrize("escape", ESCAPES)
@pytest.mark.parametrize("tool", ["fs_read", "fs_stat", "fs_list", "fs_search", "fs_write"])
def test_paths_leading_outside_the_roots_are_refused(
    fs: FilesystemTools, tree: dict[str, Path], escape: str, tool: str
) -> None:
    (tree["root"] / "out_link").symlink_to(tree["outside"], target_is_directory=True)
    path = escape.format(outside=tree["outside"])
    if tool in ("fs_list", "fs_search"):
        path = str(Path(path).parent)
    calls = {
        "fs_read": lambda: fs.fs_read(path=path),
        "fs_stat": lambda: fs.fs_stat(path=path, sha256=True),
        "fs_list": lambda: fs.fs_list(path=path),
        "fs_search": lambda: fs.fs_search(path=path, contains="TODO"),
        "fs_write": lambda: fs.fs_write(path=path, content="overwritten"),
    }
    with pytest.raises(RefusedError, match="outside the allowed roots") as caught:
        calls[tool]()
    assert OUTSIDE_TEXT not in str(caught.value)
    assert (tree["outside"] / "secret.txt").read_text().startswith(OUTSIDE_TEXT)


def test_a_symlinked_file_pointing_out_is_refused_and_one_pointing_in_is_followed(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    (tree["root"] / "leak.txt").symlink_to(tree["outside"] / "secret.txt")
    (tree["root"] / "alias.txt").symlink_to(tree["root"] / "a.txt")
    (tree["root"] / "dangling").symlink_to(tree["outside"] / "new.txt")
    for call in (lambda: fs.fs_read(path="leak.txt"), lambda: fs.fs_stat(path="leak.txt")):
        with pytest.raises(RefusedError):
            call()
    with pytest.raises(RefusedError):  # a dangling link out must not create the file outside
        fs.fs_write(path="dangling", content="x")
    assert not (tree["outside"] / "new.txt").exists()
    assert fs.fs_read(path="alias.txt").text.startswith("alpha")
    stat_result = fs.fs_stat(path="alias.txt")
    assert stat_result.is_symlink and stat_result.path == str(tree["root"].resolve() / "a.txt")


def test_a_root_given_through_a_symlink_is_resolved_once(tree: dict[str, Path], tmp_path: Path) -> None:
    link = tmp_path / "root_link"
    link.symlink_to(tree["root"], target_is_directory=True)
    tools = make_tools(link)
    assert tools.fs_read(path=str(link / "a.txt")).text.startswith("alpha")
    assert tools.fs_read(path=str(tree["root"] / "a.txt")).text.startswith("alpha")


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(tree: dict[str, Path]) -> None:
    sandbox = Sandbox([tree["root"]])
    (tree["outside"] / "b.txt").write_text(OUTSIDE_TEXT)
    real = sandbox.resolve("sub/b.txt")
    real_dir = sandbox.resolve("sub")
    (tree["root"] / "sub").rename(tree["root"] / "sub_moved")
    (tree["root"] / "sub").symlink_to(tree["outside"], target_is_directory=True)  # the race, won
    with pytest.raises(RefusedError, match="symlink"):
        sandbox.open(real, os.O_RDONLY)
    with pytest.raises(RefusedError, match="symlink"):
        sandbox.write_atomic(real, b"overwritten", overwrite=True, create_dirs=False, shown="sub/b.txt")
    with pytest.raises(RefusedError, match="symlink"):
        list(sandbox.walk(real_dir))
    assert (tree["outside"] / "b.txt").read_text() == OUTSIDE_TEXT
    assert sorted(p.name for p in tree["outside"].iterdir()) == ["b.txt", "secret.txt"]


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(tree: dict[str, Path]) -> None:
    sandbox = Sandbox([tree["root"]])
    real = sandbox.resolve("a.txt")
    (tree["root"] / "a.txt").unlink()
    (tree["root"] / "a.txt").symlink_to(tree["outside"] / "secret.txt")
    with pytest.raises(RefusedError, match="symlink"):
        sandbox.open_file(real)


# ----- fs_search --------------------------------------------------------------------------------------
def test_search_by_content_gives_lines_and_columns(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    result = fs.fs_search(contains="TODO")
    root = tree["root"].resolve()
    assert [(m.path, m.line, m.column, m.text) for m in result.matches] == [
        (str(root / "notes.md"), 2, 1, "TODO: write more"),
        (str(root / "sub" / "b.txt"), 2, 5, "two TODO"),
    ]
    assert result.files_scanned == 4 and not result.truncated
    insensitive = fs.fs_search(contains="todo", case_sensitive=False)
    assert [Path(m.path).name for m in insensitive.matches] == ["notes.md", "b.txt", "c.py"]
    regex = fs.fs_search(contains=r"^t\w+e", regex=True)
    assert [(Path(m.path).name, m.line) for m in regex.matches] == [("b.txt", 3)]


def test_search_by_name_and_both(fs: FilesystemTools) -> None:
    by_name = fs.fs_search(name_glob="*.txt")
    assert [Path(m.path).name for m in by_name.matches] == ["a.txt", "b.txt"]
    assert all(m.line is None for m in by_name.matches)
    both = fs.fs_search(name_glob="*.txt", contains="TODO")
    assert [(Path(m.path).name, m.line) for m in both.matches] == [("b.txt", 2)]


def test_search_skips_binary_large_and_symlinked_content(tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "blob.bin").write_bytes(b"TODO\x00binary")
    (root / "big.txt").write_text("TODO " + "x" * 200)
    (root / "out_link").symlink_to(tree["outside"], target_is_directory=True)
    (root / "leak.txt").symlink_to(tree["outside"] / "secret.txt")
    tools = make_tools(root, max_read_bytes=100)
    result = tools.fs_search(contains="TODO")
    assert [Path(m.path).name for m in result.matches] == ["notes.md", "b.txt"]
    assert result.files_skipped == 2  # blob.bin and big.txt; the links are not files to search
    assert all(OUTSIDE_TEXT not in (m.text or "") for m in result.matches)


def test_search_is_capped_by_max_results_and_max_search_files(tree: dict[str, Path]) -> None:
    (tree["root"] / "many.txt").write_text("TODO\n" * 50)
    tools = make_tools(tree["root"], max_results=5)
    capped = tools.fs_search(contains="TODO")
    assert len(capped.matches) == 5 and capped.truncated
    few_files = make_tools(tree["root"], max_search_files=2).fs_search(name_glob="*")
    assert few_files.files_scanned == 2 and len(few_files.matches) == 2 and few_files.truncated
    few = make_tools(tree["root"], max_search_files=2)
    unmatched = few.fs_search(name_glob="*.py")  # every file looked at counts, matching or not
    assert unmatched.files_scanned == 2 and unmatched.matches == [] and unmatched.truncated
    listed = few.fs_list(recursive=True, glob="*.py")
    assert listed.entries == [] and listed.truncated


def test_search_refuses_bad_requests(fs: FilesystemTools) -> None:
    with pytest.raises(RequestError, match="name_glob, contains"):
        fs.fs_search()
    with pytest.raises(RequestError, match="regular expression"):
        fs.fs_search(contains="(unclosed", regex=True)


# ----- fs_stat ----------------------------------------------------------------------------------------
def test_stat_describes_files_and_directories(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    target = tree["root"] / "a.txt"
    target.chmod(0o640)
    described = fs.fs_stat(path="a.txt", sha256=True)
    assert (described.type, described.size, described.mode, described.mode_octal) == (
        "file",
        17,
        "-rw-r-----",
        "0640",
    )
    assert described.sha256 == hashlib.sha256(target.read_bytes()).hexdigest() and not described.is_symlink
    assert described.modified.endswith("+00:00")
    directory = fs.fs_stat(path="sub", sha256=True)
    assert (
        directory.type == "directory" and directory.sha256 is None and directory.note == "not a regular file"
    )
    assert fs.fs_stat(path=".").path == str(tree["root"].resolve())


def test_stat_does_not_hash_files_over_max_hash_bytes(tree: dict[str, Path]) -> None:
    described = make_tools(tree["root"], max_hash_bytes=10).fs_stat(path="a.txt", sha256=True)
    assert described.sha256 is None and described.note == "file is larger than max_hash_bytes"


# ----- fs_write ---------------------------------------------------------------------------------------
def test_write_creates_and_replaces_atomically_keeping_the_mode(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    created = fs.fs_write(path="new.txt", content="héllo\n")
    assert created.created and created.bytes_written == len("héllo\n".encode())
    assert (tree["root"] / "new.txt").read_text() == "héllo\n"
    (tree["root"] / "new.txt").chmod(0o600)
    replaced = fs.fs_write(path="new.txt", content="second")
    assert not replaced.created and (tree["root"] / "new.txt").read_text() == "second"
    assert stat.S_IMODE((tree["root"] / "new.txt").stat().st_mode) == 0o600
    assert not [p for p in tree["root"].iterdir() if p.name.startswith(".llmhost-")]  # no temp left


def test_write_without_overwrite_refuses_an_existing_file(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    with pytest.raises(ConflictError, match="overwrite=true"):
        fs.fs_write(path="a.txt", content="clobbered", overwrite=False)
    assert (tree["root"] / "a.txt").read_text().startswith("alpha")
    assert fs.fs_write(path="fresh.txt", content="x", overwrite=False).created
    assert not [p for p in tree["root"].iterdir() if p.name.startswith(".llmhost-")]


def test_write_refuses_content_over_max_write_bytes(tree: dict[str, Path]) -> None:
    tools = make_tools(tree["root"], max_write_bytes=4)
    with pytest.raises(RequestError, match="max_write_bytes"):
        tools.fs_write(path="big.txt", content="12345")
    assert not (tree["root"] / "big.txt").exists()
    assert tools.fs_write(path="ok.txt", content="1234").bytes_written == 4


def test_write_creates_parent_directories_only_when_asked(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    with pytest.raises(NotFoundError):
        fs.fs_write(path="x/y/z.txt", content="deep")
    assert fs.fs_write(path="x/y/z.txt", content="deep", create_dirs=True).created
    assert (tree["root"] / "x" / "y" / "z.txt").read_text() == "deep"
    with pytest.raises(RequestError, match="is a directory"):
        fs.fs_write(path="sub", content="x")
    with pytest.raises(RequestError, match="is a directory"):
        fs.fs_write(path=".", content="x")


def test_write_through_a_symlinked_parent_pointing_out_creates_nothing_outside(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    (tree["root"] / "out_link").symlink_to(tree["outside"], target_is_directory=True)
    with pytest.raises(RefusedError):
        fs.fs_write(path="out_link/new/file.txt", content="x", create_dirs=True)
    assert sorted(p.name for p in tree["outside"].iterdir()) == ["secret.txt"]


# ----- fs_move ----------------------------------------------------------------------------------------
def test_move_renames_files_and_directories(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    root = tree["root"]
    moved = fs.fs_move(source="a.txt", destination="renamed.txt")
    assert moved.destination == str(root.resolve() / "renamed.txt") and not moved.overwritten
    assert not (root / "a.txt").exists() and (root / "renamed.txt").read_text().startswith("alpha")
    fs.fs_move(source="sub", destination="new/place", create_dirs=True)
    assert (root / "new" / "place" / "deep" / "c.py").exists() and not (root / "sub").exists()


def test_move_refuses_to_overwrite_unless_asked(fs: FilesystemTools, tree: dict[str, Path]) -> None:
    root = tree["root"]
    with pytest.raises(ConflictError, match="overwrite=true"):
        fs.fs_move(source="a.txt", destination="notes.md")
    assert (root / "a.txt").exists() and (root / "notes.md").read_text().startswith("# Notes")
    replaced = fs.fs_move(source="a.txt", destination="notes.md", overwrite=True)
    assert replaced.overwritten and (root / "notes.md").read_text().startswith("alpha")


def test_move_keeps_roots_and_the_tree_intact(tree: dict[str, Path]) -> None:
    root = tree["root"]
    nested = root / "sub" / "deep"
    tools = FilesystemTools(FilesystemSettings(roots=[root, nested], writable=True))
    for source, destination in [
        (str(root), "x"),
        ("sub", "elsewhere"),
        (str(nested), "x"),
        ("a.txt", str(root)),
    ]:
        with pytest.raises(RefusedError, match="root"):
            tools.fs_move(source=source, destination=destination, overwrite=True)
    (root / "d").mkdir()
    with pytest.raises(RequestError, match="into itself"):
        tools.fs_move(source="d", destination="d/inner")
    with pytest.raises(RefusedError, match="outside"):
        tools.fs_move(source="a.txt", destination=str(tree["outside"] / "stolen.txt"))
    with pytest.raises(RefusedError, match="outside"):
        tools.fs_move(source=str(tree["outside"] / "secret.txt"), destination="stolen.txt")
    assert (root / "a.txt").exists() and nested.is_dir() and (tree["outside"] / "secret.txt").exists()


def test_move_moves_a_symlink_itself_and_refuses_one_pointing_out(
    fs: FilesystemTools, tree: dict[str, Path]
) -> None:
    root = tree["root"]
    (root / "alias.txt").symlink_to(root / "a.txt")
    fs.fs_move(source="alias.txt", destination="alias2.txt")
    assert (root / "alias2.txt").is_symlink() and (root / "a.txt").is_file()
    (root / "leak.txt").symlink_to(tree["outside"] / "secret.txt")
    with pytest.raises(RefusedError, match="symlink points outside"):
        fs.fs_move(source="leak.txt", destination="leak2.txt")
    (root / "out_link").symlink_to(tree["outside"], target_is_directory=True)
    with pytest.raises(RefusedError, match="outside"):  # the destination's parent is a link out
        fs.fs_move(source="notes.md", destination="out_link/notes.md")
    assert sorted(p.name for p in tree["outside"].iterdir()) == ["secret.txt"]
