"""Pulling models from a loopback Hugging Face Hub (``tests.hub_server``): nothing here reaches the internet.

Covers spec parsing and file selection, the happy path (with the hub's 302 to its CDN), resume after a
dropped connection (within one pull and across pulls, always with a ``Range``), kills at several byte
offsets (in-process drops, and a real ``SIGKILL`` of a pulling process), wrong checksums, 404, 401/403
for gated repos (and success with the right token), disk full, plain URLs with ``--sha256``,
``HF_ENDPOINT``, and that the token never shows up in an error. Pulls with a ``DestinationPolicy`` (as the
HTTP API makes them) reach the loopback hub only when it is allowed, hop by hop; without one (the CLI)
they reach it as before. tests/security/test_pull_ssrf.py covers the policy over the HTTP API.

Disk full is simulated two ways: ``shutil.disk_usage``, as the download module alone sees it, reports
little free space (the pre-check), and ``llmhost.models.pull._write_all`` is monkeypatched to raise
``ENOSPC`` part-way (a disk that fills up during the download).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import llmhost.models.pull.download as pull_mod
from llmhost.errors import ModelError, RequestError
from llmhost.models.pull import FetchError, PullProgress, default_model_name, parse_pull_spec, pull_model
from llmhost.models.store import ModelStore
from llmhost.net import DestinationPolicy
from tests.hub_server import LOOPBACK_ALLOW_HOSTS, HubServer, isolate_from_real_hub, running_hub
from tests.models.conftest import PatchOnlyIn
from tests.support import free_port, sha256_of
from tests.tiny_gguf import write_not_gguf, write_tiny_llama_gguf

REPO = "Org/Tiny-GGUF"
TOKEN = "hf_secretTOKEN0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct tiny GGUFs, plus a bigger one (~3 MB) so downloads take many blocks."""
    d = tmp_path_factory.mktemp("pull-gguf")
    return {
        "q4": write_tiny_llama_gguf(d / "q4.gguf", seed=1),
        "q8": write_tiny_llama_gguf(d / "q8.gguf", seed=2),
        "f16": write_tiny_llama_gguf(d / "f16.gguf", seed=3),
        "big": write_tiny_llama_gguf(d / "big.gguf", seed=4, n_embd=256, n_ff=1024),
    }


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token or endpoint from the developer's machine; no waiting between retries."""
    isolate_from_real_hub(monkeypatch, tmp_path)


@pytest.fixture
def hub(hub: HubServer, ggufs: dict[str, Path]) -> HubServer:
    """The shared loopback hub (tests/models/conftest.py) serving this module's repos."""
    hub.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": ggufs["q4"],
            "tiny-Q8_0.gguf": ggufs["q8"],
            "tiny-f16.gguf": ggufs["f16"],
            "README.md": b"# tiny\n",
        },
    )
    hub.add_repo("Org/Big-GGUF", {"big-Q4_K_M.gguf": ggufs["big"]})
    hub.add_repo("Org/Gated-GGUF", {"gated-Q4_K_M.gguf": ggufs["q4"]}, gated=True, token=TOKEN)
    return hub


def downloads(store: ModelStore) -> dict[str, int]:
    d = store.models_dir / "downloads"
    return {p.name: p.stat().st_size for p in d.iterdir()} if d.is_dir() else {}


def assert_nothing_registered(store: ModelStore) -> None:
    assert store.registry.list() == []
    assert [p.name for p in store.blobs_dir.iterdir()] == []


# ----- spec parsing and names -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "repo", "filename", "quant", "revision"),
    [
        ("hf:Org/Repo", "Org/Repo", None, None, "main"),
        ("hf:Org/Repo:Q4_K_M", "Org/Repo", None, "Q4_K_M", "main"),
        ("hf:Org/Repo:model-q8_0.gguf", "Org/Repo", "model-q8_0.gguf", None, "main"),
        ("hf:Org/Repo:sub/dir/model.GGUF", "Org/Repo", "sub/dir/model.GGUF", None, "main"),
        ("hf:Org/Repo@v1.0:IQ2_XXS", "Org/Repo", None, "IQ2_XXS", "v1.0"),
        ("hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", "bartowski/Qwen2.5-0.5B-Instruct-GGUF", None,
         "Q4_K_M", "main"),
    ],
)  # fmt: skip
def test_parse_hf_specs(spec: str, repo: str, filename: str | None, quant: str | None, revision: str) -> None:
    parsed = parse_pull_spec(spec)
    assert (parsed.kind, parsed.repo_id, parsed.filename, parsed.quant, parsed.revision) == (
        "hf",
        repo,
        filename,
        quant,
        revision,
    )


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "Org/Repo",
        "hf:",
        "hf:OnlyOrg",
        "hf:Org/Repo/extra",
        "hf:Org/../etc",
        "hf:Org/Repo:",
        "hf:Org/Repo:../../etc/passwd.gguf",
        "hf:Org/Repo:Q4 K M",
        "ftp://example.com/model.gguf",
        "http://example.com/model.gguf",  # plain http only for loopback
        "https://user:pw@example.com/model.gguf",
        "https://example.com/",
    ],
)
def test_bad_specs_are_request_errors(spec: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_pull_spec(spec)
    assert "pw" not in str(info.value)


def test_url_specs() -> None:
    assert parse_pull_spec("https://example.com/m/model.gguf?sig=1").kind == "url"
    assert parse_pull_spec("http://127.0.0.1:8000/model.gguf").kind == "url"
    assert parse_pull_spec("http://localhost/model.gguf").kind == "url"
    assert (
        str(parse_pull_spec("https://example.com/m/model.gguf?sig=SECRET"))
        == "https://example.com/m/model.gguf"
    )


def test_default_names() -> None:
    spec = parse_pull_spec("hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M")
    assert (
        default_model_name(spec, "qwen2.5-0.5b-instruct-q4_k_m.gguf") == "qwen2.5-0.5b-instruct-gguf:q4_k_m"
    )
    spec = parse_pull_spec("hf:Org/Repo:sub/Model.Q8_0.gguf")
    assert default_model_name(spec, "sub/Model.Q8_0.gguf") == "repo:q8_0"
    spec = parse_pull_spec("hf:Org/Repo")
    assert default_model_name(spec, "weird name.gguf") == "repo:weird-name"
    spec = parse_pull_spec("https://example.com/x/Llama-3-8B-Instruct-Q5_K_S.gguf")
    assert default_model_name(spec, "Llama-3-8B-Instruct-Q5_K_S.gguf") == "llama-3-8b-instruct:q5_k_s"


def test_progress_json_mirrors_ollama() -> None:
    event = PullProgress("downloading", total=10, completed=4, digest="sha256:" + "a" * 64, detail="x.gguf")
    assert json.loads(event.to_json()) == {
        "status": "downloading",
        "total": 10,
        "completed": 4,
        "digest": "sha256:" + "a" * 64,
        "detail": "x.gguf",
    }
    assert PullProgress("success").to_json() == '{"status":"success"}'


# ----- happy path and file selection ------------------------------------------------------------------
def test_pull_default_picks_q4_k_m(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    events: list[PullProgress] = []
    record = pull_model(store, f"hf:{REPO}", endpoint=hub.url, progress=events.append)

    repo = hub.repos[REPO]
    assert record.name == "tiny-gguf:q4_k_m"
    assert record.digest == f"sha256:{sha256_of(ggufs['q4'])}"
    assert record.source == f"hf:{REPO}/tiny-Q4_K_M.gguf@{repo.sha}"
    assert record.architecture == "llama"
    assert store.registry.get("tiny-gguf:q4_k_m") == record
    assert record.path.read_bytes() == ggufs["q4"].read_bytes()
    assert downloads(store) == {}  # staging cleaned up

    statuses = [e.status for e in events]
    assert statuses[0] == "resolving" and statuses[-1] == "success"
    assert {"downloading", "verifying", "registering"} <= set(statuses)
    assert statuses.index("verifying") < statuses.index("registering")
    assert all(e.digest == record.digest for e in events if e.status != "resolving")
    done = [e for e in events if e.status == "downloading"][-1]
    assert done.completed == done.total == ggufs["q4"].stat().st_size

    # The download is pinned to the commit, goes through the hub's 302 and the CDN (another host).
    gets = hub.file_requests()
    assert [r.path for r in gets] == [
        f"/{REPO}/resolve/{repo.sha}/tiny-Q4_K_M.gguf",
        f"/cdn/{sha256_of(ggufs['q4'])}",
    ]
    assert gets[1].headers["host"].startswith("localhost:")


@pytest.mark.parametrize(
    ("selector", "key", "name"),
    [
        (":q8_0", "q8", "tiny-gguf:q8_0"),
        (":Q8_0", "q8", "tiny-gguf:q8_0"),
        (":F16", "f16", "tiny-gguf:f16"),
        (":tiny-Q8_0.gguf", "q8", "tiny-gguf:q8_0"),
    ],
)
def test_pull_selects_quant_or_file(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path], selector: str, key: str, name: str
) -> None:
    record = pull_model(store, f"hf:{REPO}{selector}", endpoint=hub.url)
    assert record.name == name
    assert record.digest == f"sha256:{sha256_of(ggufs[key])}"


def test_pull_with_explicit_name_and_matching_sha(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    record = pull_model(
        store, f"hf:{REPO}:Q8_0", endpoint=hub.url, name="mine:v1", sha256=sha256_of(ggufs["q8"])
    )
    assert record.name == "mine:v1"


def test_single_gguf_is_the_default(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    hub.add_repo("Org/One", {"only-model.gguf": ggufs["q8"], "mmproj-model-f16.gguf": ggufs["f16"]})
    record = pull_model(store, "hf:Org/One", endpoint=hub.url)
    assert record.digest == f"sha256:{sha256_of(ggufs['q8'])}"
    assert record.name == "one:only-model"


def test_selection_errors_list_candidates(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    hub.add_repo("Org/Many", {"a-Q8_0.gguf": ggufs["q8"], "b-F16.gguf": ggufs["f16"]})
    with pytest.raises(ModelError, match=r"a-Q8_0\.gguf, b-F16\.gguf"):
        pull_model(store, "hf:Org/Many", endpoint=hub.url)
    with pytest.raises(ModelError, match=r"matches quantization Q2_K; available: F16, Q8_0"):
        pull_model(store, "hf:Org/Many:Q2_K", endpoint=hub.url)
    with pytest.raises(ModelError, match=r"nope\.gguf not found in Org/Many"):
        pull_model(store, "hf:Org/Many:nope.gguf", endpoint=hub.url)
    hub.add_repo(
        "Org/Split", {"m-Q4_K_M-00001-of-00002.gguf": ggufs["q4"], "m-Q4_K_M-00002-of-00002.gguf": b"x"}
    )
    with pytest.raises(ModelError, match="split"):
        pull_model(store, "hf:Org/Split", endpoint=hub.url)
    hub.add_repo("Org/NoGGUF", {"README.md": b"hi"})
    with pytest.raises(ModelError, match="no GGUF files"):
        pull_model(store, "hf:Org/NoGGUF", endpoint=hub.url)
    assert_nothing_registered(store)


def test_already_stored_file_is_not_downloaded_again(hub: HubServer, store: ModelStore) -> None:
    first = pull_model(store, f"hf:{REPO}", endpoint=hub.url)
    n = len(hub.file_requests())
    second = pull_model(store, f"hf:{REPO}", endpoint=hub.url, name="again")
    assert len(hub.file_requests()) == n
    assert second.digest == first.digest and second.name == "again"
    # The stored file is re-verified and kept where it is: both names still have it.
    assert first.path.read_bytes() == hub.repos[REPO].files["tiny-Q4_K_M.gguf"].path.read_bytes()
    store.remove(first.name)
    assert second.path.is_file()


def test_huggingface_hubs_own_downloader_accepts_the_loopback_hub(hub: HubServer, tmp_path: Path) -> None:
    """The fake hub is faithful enough for ``hf_hub_download`` itself (HEAD metadata on the 302)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "tiny-Q8_0.gguf", endpoint=hub.url, cache_dir=tmp_path / "c", token=False)
    assert sha256_of(Path(path)) == hub.repos[REPO].files["tiny-Q8_0.gguf"].sha256


# ----- resume -----------------------------------------------------------------------------------------
def test_dropped_connection_resumes_within_one_pull(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    cut = 1_000_000
    hub.faults.drop_after = [cut]
    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha256_of(ggufs['big'])}"
    cdn = [r for r in hub.file_requests() if r.path.startswith("/cdn/")]
    assert [r.headers.get("range") for r in cdn] == [None, f"bytes={cut}-"]
    assert downloads(store) == {}


def test_interrupted_pull_resumes_on_the_next_pull(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    cut = 777_777
    sha = sha256_of(ggufs["big"])
    hub.faults.drop_after = [cut]
    with pytest.raises(ModelError, match="pull again to resume"):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url, retries=0)
    assert_nothing_registered(store)
    assert downloads(store) == {f"{sha}.partial": cut, f"{sha}.partial.json": pytest.approx(150, abs=150)}
    sidecar = json.loads((store.models_dir / "downloads" / f"{sha}.partial.json").read_text())
    assert (
        sidecar["sha256"] == sha and sidecar["etag"] == sha and sidecar["size"] == ggufs["big"].stat().st_size
    )

    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha}"
    last = hub.file_requests()[-1]
    assert last.headers.get("range") == f"bytes={cut}-"
    assert downloads(store) == {}


def test_partial_of_a_changed_remote_file_is_not_resumed(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    sha = sha256_of(ggufs["big"])
    hub.faults.drop_after = [500_000]
    with pytest.raises(ModelError):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url, retries=0)
    sidecar = store.models_dir / "downloads" / f"{sha}.partial.json"
    meta = json.loads(sidecar.read_text())
    meta["etag"] = "another-etag"  # as if the server's file had changed since
    sidecar.write_text(json.dumps(meta))
    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha}"
    cdn = [r.headers.get("range") for r in hub.file_requests() if r.path.startswith("/cdn/")]
    assert cdn == [None, "bytes=500000-", None]  # tried to resume, saw another ETag, started over


def test_damaged_partial_is_downloaded_again(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    sha = sha256_of(ggufs["big"])
    hub.faults.drop_after = [600_000]
    with pytest.raises(ModelError):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url, retries=0)
    partial = store.models_dir / "downloads" / f"{sha}.partial"
    data = bytearray(partial.read_bytes())
    data[1234] ^= 0xFF
    partial.write_bytes(bytes(data))
    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha}"
    cdn = [r.headers.get("range") for r in hub.file_requests() if r.path.startswith("/cdn/")]
    assert cdn == [None, "bytes=600000-", None]


@pytest.mark.parametrize("fraction", [0.0, 0.000001, 0.1, 0.5, 0.93, 0.999999])
def test_kill_at_any_point_leaves_only_a_resumable_partial(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path], fraction: float
) -> None:
    size = ggufs["big"].stat().st_size
    sha = sha256_of(ggufs["big"])
    cut = int(size * fraction)
    hub.faults.drop_after = [cut]
    with pytest.raises(ModelError) as info:
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url, retries=0)
    assert "dropped" in str(info.value)
    assert_nothing_registered(store)
    assert downloads(store) == {f"{sha}.partial": cut, f"{sha}.partial.json": pytest.approx(150, abs=150)}

    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha}"
    expected_range = f"bytes={cut}-" if cut else None
    assert hub.file_requests()[-1].headers.get("range") == expected_range
    assert downloads(store) == {}


_PULL_SCRIPT = """
import sys
from pathlib import Path
from llmhost.models.pull import pull_model
from llmhost.models.registry import Registry
from llmhost.models.store import ModelStore
data = Path(sys.argv[1])
store = ModelStore(data / "models", Registry(data / "llmhost.db"))
pull_model(store, "hf:Org/Big-GGUF", endpoint=sys.argv[2])
"""


@pytest.mark.parametrize("cut", [1, 300_000, 2_000_000])
def test_sigkill_mid_download_registers_nothing_and_resumes(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path], tmp_path: Path, cut: int
) -> None:
    sha = sha256_of(ggufs["big"])
    hub.faults.stall_after = [cut]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLMHOST_"))}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PULL_SCRIPT, str(tmp_path / "data"), hub.url], cwd=REPO_ROOT, env=env
    )
    partial = store.models_dir / "downloads" / f"{sha}.partial"
    try:
        assert hub.stalled.wait(60), "the download never started"
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size >= cut):
            assert time.monotonic() < deadline and proc.poll() is None, downloads(store)
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.release()

    assert_nothing_registered(store)
    left = downloads(store)
    assert left[f"{sha}.partial"] == cut
    assert set(left) <= {f"{sha}.partial", f"{sha}.partial.json", f"{sha}.lock"}

    record = pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert record.digest == f"sha256:{sha}"
    assert hub.file_requests()[-1].headers.get("range") == f"bytes={cut}-"


def test_second_concurrent_pull_of_the_same_file_is_refused(hub: HubServer, store: ModelStore) -> None:
    hub.faults.stall_after = [100_000]
    errors: list[BaseException] = []

    def first() -> None:
        try:
            pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url, retries=0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert hub.stalled.wait(30)
        with pytest.raises(ModelError, match="already in progress"):
            pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    finally:
        hub.release()
        thread.join(30)
    assert errors and isinstance(errors[0], ModelError)  # the first one saw its connection drop
    assert pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url).name == "big-gguf:q4_k_m"


# ----- verification and errors -----------------------------------------------------------------------
def test_wrong_checksum_is_rejected_and_cleaned(hub: HubServer, store: ModelStore) -> None:
    hub.faults.corrupt = True
    with pytest.raises(ModelError, match="checksum mismatch") as info:
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert "discarded" in str(info.value)
    assert_nothing_registered(store)
    assert downloads(store) == {}
    assert len(hub.file_requests()) == 2  # one download (302 + CDN); no pointless retry


def test_file_that_is_not_gguf_is_not_registered(hub: HubServer, store: ModelStore, tmp_path: Path) -> None:
    hub.add_repo("Org/Bad", {"bad-Q4_K_M.gguf": write_not_gguf(tmp_path / "bad.gguf", size=100_000)})
    with pytest.raises(ModelError, match="not a GGUF file"):
        pull_model(store, "hf:Org/Bad", endpoint=hub.url)
    assert_nothing_registered(store)
    assert downloads(store) == {}


def test_unknown_repo_is_not_found(hub: HubServer, store: ModelStore) -> None:
    with pytest.raises(ModelError, match=r"repository Org/Missing on the hub .* not found"):
        pull_model(store, "hf:Org/Missing", endpoint=hub.url)
    assert_nothing_registered(store)


def test_file_missing_on_the_hub_is_not_found(hub: HubServer, store: ModelStore) -> None:
    hub.faults.status = 404
    with pytest.raises(ModelError, match="not found on the hub"):
        pull_model(store, f"hf:{REPO}", endpoint=hub.url)
    assert_nothing_registered(store)
    assert downloads(store) == {}


def test_server_errors_are_retried_then_reported(hub: HubServer, store: ModelStore) -> None:
    hub.faults.status = 503
    with pytest.raises(ModelError, match="HTTP 503"):
        pull_model(store, f"hf:{REPO}", endpoint=hub.url, retries=2)
    assert len(hub.file_requests()) == 3
    assert_nothing_registered(store)


def test_unreachable_hub(store: ModelStore) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ModelError, match="cannot reach the hub"):
        pull_model(store, f"hf:{REPO}", endpoint=f"http://127.0.0.1:{port}")


def test_gated_repo_without_token(hub: HubServer, store: ModelStore) -> None:
    with pytest.raises(ModelError) as info:
        pull_model(store, "hf:Org/Gated-GGUF", endpoint=hub.url)
    message = str(info.value)
    assert "HF_TOKEN" in message and "gated" in message
    assert [r.headers.get("authorization") for r in hub.file_requests()] == [None]
    assert_nothing_registered(store)


def test_gated_repo_with_wrong_token_never_leaks_it(
    hub: HubServer, store: ModelStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "hf_wrongTOKENwrongTOKEN42"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with caplog.at_level("DEBUG"), pytest.raises(ModelError) as info:
        pull_model(store, "hf:Org/Gated-GGUF", endpoint=hub.url)
    assert "gated" in str(info.value) and "HF_TOKEN" in str(info.value)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text
    assert (
        hub.file_requests()[-1].headers.get("authorization") == f"Bearer {wrong}"
    )  # it was sent, to the hub


def test_gated_repo_with_token_argument(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    record = pull_model(store, "hf:Org/Gated-GGUF", endpoint=hub.url, token=TOKEN)
    assert record.digest == f"sha256:{sha256_of(ggufs['q4'])}"
    resolve, cdn = hub.file_requests()
    assert resolve.headers.get("authorization") == f"Bearer {TOKEN}"
    assert "authorization" not in cdn.headers  # never forwarded to another host


def test_gated_repo_with_hf_token_and_hf_endpoint_from_env(
    hub: HubServer, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    record = pull_model(store, "hf:Org/Gated-GGUF")
    assert record.name == "gated-gguf:q4_k_m"
    assert hub.requests[0].path == "/api/models/Org/Gated-GGUF"


def test_disk_full_before_download(hub: HubServer, store: ModelStore, patch_only_in: PatchOnlyIn) -> None:
    """Simulated: ``shutil.disk_usage`` reports 1000 free bytes (to the download module alone)."""
    real = shutil.disk_usage

    def tiny(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    patch_only_in(pull_mod, "shutil", disk_usage=tiny)
    with pytest.raises(ModelError, match="not enough disk space"):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert_nothing_registered(store)
    assert not any(name.endswith(".partial") for name in downloads(store))


def test_disk_full_during_download(
    hub: HubServer, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated: the write helper raises ENOSPC once 1 MB is on disk, as a filling disk would."""
    real = pull_mod._write_all
    written = 0

    def filling(fd: int, data: memoryview) -> None:
        nonlocal written
        if written + len(data) > 1_000_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)
        written += len(data)

    monkeypatch.setattr(pull_mod, "_write_all", filling)
    with pytest.raises(ModelError, match="not enough disk space"):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert_nothing_registered(store)
    assert downloads(store) == {}  # the partial is dropped: it was filling the disk


# ----- flushing to disk while downloading -------------------------------------------------------------
def test_writeback_flushes_what_has_arrived_while_the_download_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch_only_in: PatchOnlyIn
) -> None:
    flushed = threading.Event()
    calls: list[int] = []

    def fake_sync(fd: int) -> None:
        calls.append(fd)
        flushed.set()

    monkeypatch.setattr(pull_mod, "_WRITEBACK_BYTES", 1000)
    patch_only_in(pull_mod, "os", fdatasync=fake_sync)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pull_mod._Writeback(fd) as writeback:
            writeback.wrote(999)
            assert not flushed.wait(0.2)  # less than _WRITEBACK_BYTES: no flush yet
            writeback.wrote(1)
            assert flushed.wait(10)
    finally:
        os.close(fd)
    assert calls == [fd] and writeback.error is None


def test_writeback_keeps_the_first_flush_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch_only_in: PatchOnlyIn
) -> None:
    def failing_sync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(pull_mod, "_WRITEBACK_BYTES", 1)
    patch_only_in(pull_mod, "os", fdatasync=failing_sync)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pull_mod._Writeback(fd) as writeback:
            writeback.wrote(1)
            deadline = time.monotonic() + 10
            while writeback.error is None and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        os.close(fd)
    assert writeback.error is not None and writeback.error.errno == errno.EIO


def test_a_failed_flush_during_the_download_discards_it(
    hub: HubServer, store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fdatasync the kernel may have dropped the data: the partial is not kept or used."""

    class FailedWriteback(pull_mod._Writeback):
        def __exit__(self, *exc_info: object) -> None:
            super().__exit__(*exc_info)
            self.error = OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(pull_mod, "_Writeback", FailedWriteback)
    with pytest.raises(ModelError, match="cannot write the download"):
        pull_model(store, "hf:Org/Big-GGUF", endpoint=hub.url)
    assert_nothing_registered(store)
    assert downloads(store) == {}


def test_sha256_given_that_disagrees_with_the_hub(hub: HubServer, store: ModelStore) -> None:
    with pytest.raises(ModelError, match="does not match the hub"):
        pull_model(store, f"hf:{REPO}", endpoint=hub.url, sha256="0" * 64)
    assert hub.file_requests() == []


def test_bad_name_or_sha_argument(hub: HubServer, store: ModelStore) -> None:
    with pytest.raises(RequestError, match="invalid model name"):
        pull_model(store, f"hf:{REPO}", endpoint=hub.url, name="../x")
    with pytest.raises(RequestError, match="64 hexadecimal"):
        pull_model(store, f"hf:{REPO}", endpoint=hub.url, sha256="abc")


# ----- plain URLs -------------------------------------------------------------------------------------
def test_url_pull_needs_sha256(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    url = hub.add_plain("model-Q8_0.gguf", ggufs["q8"])
    with pytest.raises(RequestError, match="--sha256"):
        pull_model(store, url)
    assert hub.file_requests() == []


def test_url_pull_with_right_sha256(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    url = hub.add_plain("model-Q8_0.gguf", ggufs["q8"])
    record = pull_model(store, url + "?sig=SECRET", sha256="SHA256:" + sha256_of(ggufs["q8"]).upper())
    assert record.name == "model:q8_0"
    assert record.source == f"url:{url}"  # no query string (signed URLs keep secrets there)
    assert record.digest == f"sha256:{sha256_of(ggufs['q8'])}"


def test_url_pull_with_wrong_sha256(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    url = hub.add_plain("model.gguf", ggufs["q8"])
    with pytest.raises(ModelError, match="checksum mismatch"):
        pull_model(store, url, sha256="1" * 64, name="m")
    assert_nothing_registered(store)
    assert downloads(store) == {}


def test_url_pull_resumes_and_404(hub: HubServer, store: ModelStore, ggufs: dict[str, Path]) -> None:
    url = hub.add_plain("big.gguf", ggufs["big"])
    hub.faults.drop_after = [123_456]
    record = pull_model(store, url, sha256=sha256_of(ggufs["big"]), name="big")
    assert record.name == "big"
    assert [r.headers.get("range") for r in hub.file_requests()] == [None, "bytes=123456-"]
    with pytest.raises(ModelError, match="not found"):
        pull_model(store, f"{hub.url}/files/missing.gguf", sha256="2" * 64)


# ----- destinations (pulls made for API clients) ------------------------------------------------------
def test_a_guarded_pull_reaches_the_loopback_hub_once_allowed(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    guard = DestinationPolicy(LOOPBACK_ALLOW_HOSTS)
    record = pull_model(store, f"hf:{REPO}", endpoint=hub.url, destinations=guard)
    assert record.digest == f"sha256:{sha256_of(ggufs['q4'])}"
    assert any(r.path.startswith("/cdn/") for r in hub.file_requests())  # the 302 hop was followed


def test_a_guarded_pull_refuses_a_loopback_hub_endpoint(hub: HubServer, store: ModelStore) -> None:
    with pytest.raises(ModelError, match="pull_allow_hosts") as info:
        pull_model(store, f"hf:{REPO}", endpoint=hub.url, destinations=DestinationPolicy())
    assert not isinstance(info.value, FetchError)  # the operator's setting: said plainly
    assert hub.requests == []
    assert_nothing_registered(store)


def test_a_guarded_pull_checks_every_redirect_hop(
    tmp_path: Path, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    # The hub (127.0.0.2) is allowed; its 302 goes to "localhost", which resolves to 127.0.0.1: refused.
    repos = {REPO: {"tiny-Q4_K_M.gguf": ggufs["q4"]}}
    with running_hub(tmp_path / "hub2", repos=repos, host="127.0.0.2", cdn_host="localhost") as hub:
        guard = DestinationPolicy(["127.0.0.2"])
        with pytest.raises(FetchError, match=r"localhost resolves to 127\.0\.0\.1, which is not a public"):
            pull_model(store, f"hf:{REPO}", endpoint=hub.url, destinations=guard, retries=0)
        assert any("/resolve/" in r.path for r in hub.file_requests())  # the first hop was made
    assert_nothing_registered(store)


def test_a_failed_fetch_keeps_its_reason_but_shows_only_the_url(hub: HubServer, store: ModelStore) -> None:
    url = f"{hub.url}/files/missing.gguf?sig=SECRET"
    with pytest.raises(FetchError) as info:
        pull_model(store, url, sha256="2" * 64, destinations=DestinationPolicy(LOOPBACK_ALLOW_HOSTS))
    assert "HTTP 404" in str(info.value)  # the CLI and the server's log see why
    assert info.value.public_message == (
        f"could not fetch {hub.url}/files/missing.gguf; the server's log has the reason"
    )


def test_an_unguarded_pull_reaches_loopback_as_the_cli_does(
    hub: HubServer, store: ModelStore, ggufs: dict[str, Path]
) -> None:
    url = hub.add_plain("model-Q8_0.gguf", ggufs["q8"])
    assert pull_model(store, url, sha256=sha256_of(ggufs["q8"])).name == "model:q8_0"
