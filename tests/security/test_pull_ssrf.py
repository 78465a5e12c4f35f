"""``/api/pull`` is no way into the server's own networks, no port scanner, and no way to starve inference.

* Destinations: a pull over the API reaches public addresses only, plus ``pull_allow_hosts``; a URL that
  names a refused address fails at once (403), a name is judged on its resolved addresses, the
  connection goes to the addresses checked (DNS rebinding), and every redirect hop is checked again.
* Errors: refused, TLS, HTTP statuses and timeouts all read "could not fetch URL" (502) to the client;
  the reason is in the server's log only.
* Threads: pulls run on threads of their own, at most ``max_concurrent_pulls`` (429 beyond), so stuck
  pulls leave the default executor, which every generation needs to acquire its model, alone.

Everything stays on loopback: TCP listeners that count their connections stand in for internal services.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import llmhost.models.pull.download as pull_download
import llmhost.models.pull.transport as pull_transport
from llmhost.errors import ConfigError
from llmhost.models.pull import FetchError, pull_model
from llmhost.models.registry import Registry
from llmhost.models.store import ModelStore
from llmhost.net import BlockedDestinationError, DestinationPolicy, is_public_address
from tests.conftest import TINY, LiveServer, make_service, make_settings, start_server
from tests.hub_server import HubServer
from tests.support import free_port, sha256_of
from tests.tiny_gguf import write_tiny_llama_gguf

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Listener:
    """A TCP port on ``host`` that counts connections; closes them at once, or holds them unanswered."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, hold: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.hold = hold
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.hold:
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture(autouse=True)
def _fast_and_direct(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy, no hub token from this machine, no waiting between retries."""
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(pull_download, "_RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    return write_tiny_llama_gguf(tmp_path / "pulled-Q4_K_M.gguf", seed=21)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubServer]:
    with HubServer(tmp_path / "hub") as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path, tiny_model_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start a server with these settings; stopped after the test."""
    started: list[tuple[LiveServer, Any]] = []

    def start(**overrides: Any) -> LiveServer:
        settings = make_settings(tmp_path / f"data{len(started)}", **overrides)
        service = make_service(settings, tiny_model_path)
        live = start_server(settings, service)
        started.append((live, service))
        return live

    yield start
    for live, service in started:
        live.stop()
        service.close()


def api_pull(live: LiveServer, url: str, sha256: str, **extra: Any) -> httpx.Response:
    body = {"model": url, "sha256": sha256, "stream": False, **extra}
    return httpx.post(f"{live.base_url}/api/pull", json=body, timeout=30)


# ----- the address policy -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
        "169.254.169.254", "100.64.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "239.255.255.250",
        "240.0.0.1", "192.0.2.1", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "fec0::1", "ff02::1",
        "::ffff:10.0.0.1", "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a00:1::1", "2001:db8::1",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))
    assert DestinationPolicy().refusal(address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))
    assert DestinationPolicy().refusal(address) is None


def test_the_operator_allows_networks_and_names() -> None:
    policy = DestinationPolicy(["10.0.0.0/8", "fd00::/8", "Mirror.LAN."])
    assert policy.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert policy.allows_address(ipaddress.ip_address("::ffff:10.9.8.7"))
    assert policy.allows_address(ipaddress.ip_address("fd00::5"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.0.1"))
    assert policy.allows_name("mirror.lan") and policy.refusal("mirror.lan") is None
    assert DestinationPolicy().refusal("localhost") is not None
    assert DestinationPolicy(["localhost"]).refusal("localhost") is None


def test_a_bad_allow_entry_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pull_allow_hosts"):
        make_settings(tmp_path, pull_allow_hosts=["not a host!"])


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(BlockedDestinationError, match=r"10\.0\.0\.1"):
        DestinationPolicy().resolve("mixed.test", 443)


def test_the_connection_goes_to_the_address_checked_not_to_a_second_lookup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # DNS rebinding: the first answer is an allowed address, every later one the forbidden 127.0.0.1.
    allowed = Listener("127.0.0.2")
    forbidden = Listener("127.0.0.1", allowed.port)
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        answers.append("127.0.0.2" if not answers else "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[-1], int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    registry = Registry(tmp_path / "db.sqlite")
    store = ModelStore(tmp_path / "models", registry)
    try:
        with pytest.raises(FetchError):
            pull_model(
                store,
                f"https://rebind.test:{allowed.port}/m.gguf",
                sha256="3" * 64,
                retries=0,
                destinations=DestinationPolicy(["127.0.0.2"]),
            )
    finally:
        registry.close()
        allowed.close()
        forbidden.close()
    assert answers == ["127.0.0.2"]  # one lookup, checked, then used
    assert (allowed.accepted, forbidden.accepted) == (1, 0)


# ----- over the HTTP API ------------------------------------------------------------------------------
def test_an_api_pull_of_a_loopback_url_is_refused_before_connecting(
    hub: HubServer, gguf: Path, serve: Callable[..., LiveServer]
) -> None:
    live = serve()
    url = hub.add_plain("pulled-Q4_K_M.gguf", gguf)
    resp = api_pull(live, url, sha256_of(gguf))
    assert resp.status_code == 403
    assert "pull_allow_hosts" in resp.json()["error"]
    assert hub.requests == []


@pytest.mark.parametrize(
    "host", ["169.254.169.254", "10.0.0.1", "[::1]", "[fd00::1]", "localhost", "[::ffff:127.0.0.1]"]
)
def test_an_api_pull_of_a_private_or_metadata_address_is_refused(
    host: str, serve: Callable[..., LiveServer]
) -> None:
    live = serve()
    resp = api_pull(live, f"https://{host}:9/latest/meta-data/m.gguf", "4" * 64)
    assert resp.status_code == 403, resp.text
    assert "pull_allow_hosts" in resp.json()["error"]


def test_an_api_pull_of_a_name_that_resolves_to_loopback_never_connects(
    serve: Callable[..., LiveServer],
) -> None:
    # "2130706433" is not an address literal, but the resolver reads it as 127.0.0.1.
    internal = Listener("127.0.0.1")
    try:
        live = serve()
        resp = api_pull(live, f"https://2130706433:{internal.port}/m.gguf", "5" * 64)
    finally:
        internal.close()
    assert resp.status_code == 502
    assert resp.json()["error"].startswith(
        f"upstream failed: could not fetch https://2130706433:{internal.port}/"
    )
    assert internal.accepted == 0


def test_an_api_pull_is_refused_a_redirect_to_a_host_not_allowed(
    tmp_path: Path, gguf: Path, serve: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    internal = Listener("127.0.0.1")  # where the hub's 302 points: "localhost" resolves here
    try:
        with HubServer(tmp_path / "hub2", host="127.0.0.2", cdn_host="localhost") as hub:
            hub.cdn_url = f"http://localhost:{internal.port}/cdn"
            hub.add_repo("Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf})
            monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the server runs in this process
            live = serve(pull_allow_hosts=["127.0.0.2"])
            body = {"model": "hf:Org/Tiny-GGUF", "stream": False}
            resp = httpx.post(f"{live.base_url}/api/pull", json=body, timeout=30)
            assert any("/resolve/" in r.path for r in hub.file_requests())  # the first hop was made
    finally:
        internal.close()
    assert resp.status_code == 502, resp.text
    assert "could not fetch" in resp.json()["error"]
    assert internal.accepted == 0


def test_an_api_pull_refuses_a_loopback_hub_endpoint_unless_allowed(
    hub: HubServer, gguf: Path, serve: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add_repo("Org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": gguf})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    live = serve()
    resp = httpx.post(
        f"{live.base_url}/api/pull", json={"model": "hf:Org/Tiny-GGUF", "stream": False}, timeout=30
    )
    assert resp.status_code == 500 and "pull_allow_hosts" in resp.json()["error"]
    assert hub.requests == []
    allowed = serve(pull_allow_hosts=hub.allow_hosts)
    resp = httpx.post(
        f"{allowed.base_url}/api/pull", json={"model": "hf:Org/Tiny-GGUF", "stream": False}, timeout=30
    )
    assert resp.json() == {"status": "success", "digest": f"sha256:{sha256_of(gguf)}"}


def test_failed_fetches_all_read_the_same_to_the_client(
    hub: HubServer,
    gguf: Path,
    serve: Callable[..., LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pull_transport, "_TIMEOUT_S", 0.3)
    live = serve(pull_allow_hosts=["127.0.0.1"])
    url = hub.add_plain("pulled-Q4_K_M.gguf", gguf)
    closed_port = free_port()  # nothing listens there
    silent = Listener("127.0.0.1", hold=True)
    cases: dict[str, tuple[str, int | None]] = {
        "refused": (f"http://127.0.0.1:{closed_port}/m.gguf", None),
        "tls": (url.replace("http://", "https://"), None),
        "http 404": (f"{hub.url}/files/missing.gguf", None),
        "http 403": (url, 403),
        "http 500": (url, 500),
        "timeout": (f"http://127.0.0.1:{silent.port}/m.gguf", None),
    }
    seen: dict[str, tuple[int, str]] = {}
    try:
        with caplog.at_level(logging.WARNING, logger="llmhost.doors.ollama.routes"):
            for case, (target, status) in cases.items():
                hub.faults.status = status
                resp = api_pull(live, target, sha256_of(gguf))
                shown = target.split("?")[0]
                seen[case] = (resp.status_code, resp.json()["error"].replace(shown, "URL"))
    finally:
        hub.faults.status = None
        silent.close()
    assert set(seen.values()) == {
        (502, "upstream failed: could not fetch URL; the server's log has the reason")
    }
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for reason in ("Connection refused", "HTTP 404", "HTTP 403", "HTTP 500", "timed out"):
        assert reason in logged  # the operator still learns why


def test_a_streamed_pull_fails_with_the_same_generic_line(
    serve: Callable[..., LiveServer],
) -> None:
    live = serve(pull_allow_hosts=["127.0.0.1"])
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/m.gguf"
    resp = httpx.post(f"{live.base_url}/api/pull", json={"model": url, "sha256": "6" * 64}, timeout=30)
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert lines[-1] == {"error": f"could not fetch {url}; the server's log has the reason"}


# ----- threads and the cap ----------------------------------------------------------------------------
def start_stuck_pull(live: LiveServer, url: str, sha256: str) -> tuple[httpx.Client, httpx.Response]:
    """A streamed pull that has begun downloading (the hub then stalls it); close both to let it go."""
    client = httpx.Client(timeout=30)
    request = client.build_request("POST", f"{live.base_url}/api/pull", json={"model": url, "sha256": sha256})
    resp = client.send(request, stream=True)
    assert resp.status_code == 200, resp.read()
    for line in resp.iter_lines():
        if json.loads(line).get("status") == "downloading":
            break
    return client, resp


def stuck_files(hub: HubServer, count: int) -> list[tuple[str, str]]:
    """``count`` distinct 1 MiB files the hub stalls after 100 bytes: (url, sha256)."""
    hub.faults.stall_after = [100] * count
    files = []
    for i in range(count):
        body = os.urandom(1 << 20)
        files.append((hub.add_plain(f"stuck-{i}.gguf", body), hashlib.sha256(body).hexdigest()))
    return files


def let_go(hub: HubServer, pulls: list[tuple[httpx.Client, httpx.Response]]) -> None:
    for client, resp in pulls:
        resp.close()
        client.close()
    hub.release()


def test_stuck_pulls_leave_generations_their_threads(
    hub: HubServer, serve: Callable[..., LiveServer]
) -> None:
    # As many stuck pulls as asyncio's default executor has threads (ThreadPoolExecutor's default size):
    # on that executor they would leave none for a generation to acquire its model.
    executor_threads = min(32, (os.cpu_count() or 1) + 4)
    live = serve(pull_allow_hosts=["127.0.0.1"], max_concurrent_pulls=executor_threads)
    pulls: list[tuple[httpx.Client, httpx.Response]] = []
    try:
        for url, sha in stuck_files(hub, executor_threads):
            pulls.append(start_stuck_pull(live, url, sha))
        resp = httpx.post(
            f"{live.base_url}/api/generate",
            json={"model": TINY, "prompt": "hi", "stream": False, "options": {"num_predict": 2}},
            timeout=15,
        )
        assert resp.status_code == 200 and resp.json()["done"] is True
    finally:
        let_go(hub, pulls)


def test_pulls_over_the_cap_are_refused_with_429(
    hub: HubServer, gguf: Path, serve: Callable[..., LiveServer]
) -> None:
    live = serve(pull_allow_hosts=["127.0.0.1"], max_concurrent_pulls=2)
    good = hub.add_plain("pulled-Q4_K_M.gguf", gguf)
    pulls: list[tuple[httpx.Client, httpx.Response]] = []
    try:
        for url, sha in stuck_files(hub, 2):
            pulls.append(start_stuck_pull(live, url, sha))
        over = api_pull(live, good, sha256_of(gguf))
        assert over.status_code == 429
        assert "max_concurrent_pulls" in over.json()["error"]
        assert over.headers["Retry-After"]
    finally:
        let_go(hub, pulls)
    deadline = time.monotonic() + 20  # the stuck pulls notice their clients left, and free their slots
    while (resp := api_pull(live, good, sha256_of(gguf))).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.json()["status"] == "success"
