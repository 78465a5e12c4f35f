"""The opt-in system tool groups as MCP tools: off by default, on per group in the config, each behind
its own scope, every call audited, and their sandboxes holding when called through MCP. (The groups'
own tests, in tests/systools/, cover each sandbox in depth.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mcp import Client

from tests.doors.mcp.helpers import call, run, structured, text_of

GROUP_TOOLS = {
    "fs_list",
    "fs_read",
    "fs_search",
    "fs_stat",
    "web_fetch",
    "web_extract_links",
    "db_list_connections",
    "db_list_tables",
    "db_query",
    "sys_processes",
    "sys_process",
    "sys_info",
    "res_cpu",
    "res_memory",
    "res_disks",
    "res_network",
    "res_gpus",
    "sec_hash_file",
    "sec_verify_file",
    "sec_scan_text",
    "sec_scan_file",
}


def _tool_names(url: str, key: str | None = None) -> set[str]:
    async def body(client: Client) -> set[str]:
        return {t.name for t in (await client.list_tools()).tools}

    return run(body, url, key)


def _all_groups(tmp_path: Path) -> dict[str, object]:
    root = tmp_path / "root"
    root.mkdir()
    (root / "notes.txt").write_text("first line\nsecond line\n")
    (tmp_path / "outside.txt").write_text("not yours")
    (root / "escape").symlink_to(tmp_path / "outside.txt")
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    return {
        "filesystem": {"enabled": True, "roots": [str(root)]},
        "internet": {"enabled": True},
        "database": {"enabled": True, "connections": {"app": f"sqlite://{db}"}},
        "system": {"enabled": True},
        "resources": {"enabled": True},
        "security": {"enabled": True, "roots": [str(root)]},
    }


def test_no_system_tool_is_served_unless_its_group_is_enabled(make_server) -> None:  # type: ignore[no-untyped-def]
    live = make_server()
    assert not _tool_names(f"{live.base_url}/mcp") & GROUP_TOOLS


def test_enabled_groups_serve_their_tools_inside_their_sandboxes(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live = make_server(mcp=_all_groups(tmp_path))
    url = f"{live.base_url}/mcp"
    names = _tool_names(url)
    assert names >= GROUP_TOOLS and not names & {"fs_write", "fs_move"}  # not writable: no write tools
    read = structured(call(url, "fs_read", {"path": "notes.txt"}))
    assert "second line" in str(read)
    escaped = call(url, "fs_read", {"path": "escape"})
    assert escaped.is_error and "not yours" not in text_of(escaped)
    outside = call(url, "fs_read", {"path": str(tmp_path / "outside.txt")})
    assert outside.is_error and "not yours" not in text_of(outside)
    fetched = call(url, "web_fetch", {"url": f"{live.base_url}/health"})
    assert fetched.is_error and "127.0.0.1" in text_of(fetched)  # loopback is refused unless allowed
    rows = structured(call(url, "db_query", {"connection": "app", "sql": "SELECT x FROM t ORDER BY x"}))
    assert rows["rows"] == [[1], [2]]
    write = call(url, "db_query", {"connection": "app", "sql": "DELETE FROM t"})
    assert write.is_error
    assert structured(call(url, "db_query", {"connection": "app", "sql": "SELECT COUNT(*) FROM t"}))[
        "rows"
    ] == [[2]]
    assert structured(call(url, "sys_info"))["hostname"]
    assert structured(call(url, "res_memory"))
    assert structured(call(url, "res_gpus"))["gpus"] == []  # no GPU on this machine
    scan = structured(call(url, "sec_scan_text", {"text": "token = ghp_" + "a1B2" * 9}))
    assert scan["count"] == 1 and "a1B2a1B2" not in str(scan)


def test_each_group_needs_its_own_scope_and_every_call_is_audited(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    live = make_server(mcp=_all_groups(tmp_path))
    url = f"{live.base_url}/mcp"
    service = live.service
    _, files_only = service.keys.create("files", scopes=["tools:filesystem"])
    assert not call(url, "fs_stat", {"path": "notes.txt"}, key=files_only).is_error
    for tool, arguments in (
        ("db_list_connections", {}),
        ("sys_info", {}),
        ("res_memory", {}),
        ("sec_scan_text", {"text": "x"}),
        ("web_fetch", {"url": "https://example.com"}),
    ):
        refused = call(url, tool, arguments, key=files_only)
        assert refused.is_error and "lacks the 'tools:" in text_of(refused), tool
    rows = service.audit.rows(limit=1000)
    kinds = {(r.kind, r.status) for r in rows if r.door == "mcp"}
    assert ("fs_stat", 200) in kinds and ("sys_info", 403) in kinds


def test_a_writable_filesystem_group_serves_write_and_move(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    groups = _all_groups(tmp_path)
    groups["filesystem"] = {**groups["filesystem"], "writable": True}  # type: ignore[dict-item]
    live = make_server(mcp=groups)
    url = f"{live.base_url}/mcp"
    assert not call(url, "fs_write", {"path": "new.txt", "content": "hello"}).is_error
    assert (tmp_path / "root" / "new.txt").read_text() == "hello"
    outside = call(url, "fs_write", {"path": str(tmp_path / "planted.txt"), "content": "x"})
    assert outside.is_error and not (tmp_path / "planted.txt").exists()
    assert not call(url, "fs_move", {"source": "new.txt", "destination": "moved.txt"}).is_error
    assert (tmp_path / "root" / "moved.txt").exists()
