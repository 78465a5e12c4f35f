"""Pull speed: ``llmhost``'s pull vs ``curl`` from the same loopback hub, in the same run.

    .venv/bin/python bench/pull_compare.py [--size-mb 250] [--runs 3] [--work-dir DIR]

Set-up:

* The file is a small valid GGUF (``tests.tiny_gguf``) padded with random bytes to ``--size-mb`` MB
  (10^6 bytes), so it passes the store's GGUF check; the padding is incompressible.
* ``tests/hub_server.py`` serves it from a **separate process** on 127.0.0.1 (``python -m
  tests.hub_server``), with the Hugging Face URL layout and the hub's 302 to its "CDN"; bodies go out with
  ``sendfile`` from the page cache.
* Every download lands in ``--work-dir`` (one filesystem for all of them).

What is timed (wall clock, ``time.perf_counter``), interleaved: each round runs the three in a rotated
order, ``--runs`` rounds:

* ``curl``: ``curl -sfL -o FILE URL`` (the hub's ``/resolve/`` URL, following the 302), from process start
  to exit. The bytes may still be only in the page cache when it returns: no durability.
* ``curl+fsync``: the same, then ``fsync`` of the file and of its directory: the bytes are on disk.
* ``llmhost``: :func:`llmhost.models.pull.pull_model` called in this process, from the call to its return:
  the hub's model-info API call, the download (hashed on the fly), the sha256 check, the GGUF check, the
  ``fsync`` of the file, the rename into ``blobs/``, the ``fsync`` of ``blobs/`` and the registry write.
  ``llmhost download`` is the same run up to its ``verifying`` event (the part that compares to plain curl).

Between runs (untimed) every output is deleted and ``sync`` is called, so no run pays for the previous
run's writeback. Ratios are speed ratios from medians: ``median(curl time) / median(llmhost time)``; above 1
means llmhost was faster. Results go to ``bench/results/pull-YYYY-MM-DD.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPO = "bench/Bench-GGUF"
FILENAME = "bench-Q4_K_M.gguf"


def make_file(path: Path, size: int) -> Path:
    """A valid tiny GGUF, padded with random bytes to ``size`` bytes."""
    from tests.tiny_gguf import write_tiny_llama_gguf

    write_tiny_llama_gguf(path, seed=7)
    block = 4 << 20
    with open(path, "ab") as f:
        left = size - path.stat().st_size
        while left > 0:
            f.write(os.urandom(min(block, left)))
            left -= block
        f.flush()
        os.fsync(f.fileno())
    return path


def start_hub(file: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m tests.hub_server`` serving ``file``; return the process and its endpoint URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hub_server", "--file", str(file), "--repo", REPO, "--name", FILENAME],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("hub endpoint:"):
            return proc, line.split(":", 1)[1].strip()
    proc.kill()
    raise RuntimeError("the hub server did not start")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def settle(*paths: Path) -> None:
    """Delete outputs and flush every dirty page, so the next run starts with an idle disk."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    os.sync()
    time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=250, help="file size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each runs all three)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where files are written")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)

    curl = shutil.which("curl")
    if curl is None:
        sys.exit("curl is not installed (apt-get install -y curl)")
    # Imported before timing, as curl's libraries are loaded before it runs: the first pull would
    # otherwise pay ~0.2 s for importing huggingface_hub's API module.
    from huggingface_hub import HfApi  # noqa: F401

    from llmhost.models.pull import PullProgress, pull_model
    from llmhost.models.registry import Registry
    from llmhost.models.store import ModelStore

    size = args.size_mb * 1_000_000
    base = args.work_dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pull-compare-", dir=base) as tmp:
        work = Path(tmp)
        print(f"writing a {size} byte GGUF in {work} ...", flush=True)
        source = make_file(work / "source" / FILENAME, size)
        hub, endpoint = start_hub(source)
        url = f"{endpoint}/{REPO}/resolve/main/{FILENAME}"
        out = work / "curl.out"
        times: dict[str, list[float]] = {"curl": [], "curl+fsync": [], "llmhost": [], "llmhost download": []}
        phases: list[dict[str, float]] = []
        log: list[str] = []

        def run_curl(durable: bool) -> None:
            start = time.perf_counter()
            subprocess.run([curl, "-sfL", "-o", str(out), url], check=True)
            if durable:
                fsync_path(out)
                fsync_path(out.parent)
            elapsed = time.perf_counter() - start
            if out.stat().st_size != size:
                raise RuntimeError(f"curl wrote {out.stat().st_size} bytes, expected {size}")
            times["curl+fsync" if durable else "curl"].append(elapsed)
            settle(out)

        def run_llmhost() -> None:
            data = work / "store"
            registry = Registry(data / "llmhost.db")
            store = ModelStore(data / "models", registry)
            marks: dict[str, float] = {}

            def progress(event: PullProgress) -> None:
                marks.setdefault(event.status, time.perf_counter())

            start = time.perf_counter()
            record = pull_model(store, f"hf:{REPO}:{FILENAME}", endpoint=endpoint, progress=progress)
            elapsed = time.perf_counter() - start
            registry.close()
            if record.size_bytes != size:
                raise RuntimeError(f"llmhost stored {record.size_bytes} bytes, expected {size}")
            times["llmhost"].append(elapsed)
            times["llmhost download"].append(marks["verifying"] - start)
            phases.append(
                {
                    "resolve": marks["downloading"] - start,
                    "download": marks["verifying"] - marks["downloading"],
                    "register": start + elapsed - marks["verifying"],
                }
            )
            settle(data)

        runners: list[tuple[str, Callable[[], None]]] = [
            ("curl", lambda: run_curl(False)),
            ("curl+fsync", lambda: run_curl(True)),
            ("llmhost", run_llmhost),
        ]
        try:
            settle()
            for i in range(args.runs):
                order = runners[i % 3 :] + runners[: i % 3]
                for label, runner in order:
                    runner()
                    extra = ""
                    if label == "llmhost":
                        extra = "  (" + ", ".join(f"{k} {v:.3f}" for k, v in phases[-1].items()) + ")"
                    log.append(f"round {i + 1}: {label:<11} {times[label][-1]:.3f} s{extra}")
                    print(log[-1], flush=True)
        finally:
            hub.terminate()
            hub.wait(timeout=10)

    med = {label: statistics.median(t) for label, t in times.items()}
    report = render(size, args.runs, times, med, log)
    print(report)
    if not args.no_write:
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        path = results / f"pull-{dt.date.today().isoformat()}.md"
        path.write_text(report, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")


def _commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        return rev + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(size: int, runs: int, times: dict[str, list[float]], med: dict[str, float], log: list[str]) -> str:
    def mbps(seconds: float) -> str:
        return f"{size / seconds / 1e6:.0f}"

    lines = [
        f"# Pull speed: llmhost vs curl, same loopback hub — {dt.datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"- file: {size} bytes (valid GGUF + random padding), served by `tests/hub_server.py` in its own "
        "process on 127.0.0.1 (hub `/resolve/` URL, 302 to the CDN path, `sendfile`)",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; commit {_commit()}",
        f"- {runs} interleaved rounds (order rotated each round); outputs deleted and `sync` between runs",
        "- `curl`: `curl -sfL -o FILE URL`, process start to exit (not durable: bytes may be in the page "
        "cache only)",
        "- `curl+fsync`: the same plus `fsync` of the file and its directory (durable)",
        "- `llmhost`: `pull_model()` call to return: model info, download + sha256, GGUF check, fsync of "
        "file, rename into `blobs/`, fsync of the directory, registry write (durable)",
        "- `llmhost download`: the same run up to its `verifying` event (download + hash only)",
        "",
        "| what | median (s) | MB/s | runs (s) |",
        "|---|---:|---:|---|",
    ]
    for label, values in times.items():
        runs_s = ", ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {label} | {med[label]:.3f} | {mbps(med[label])} | {runs_s} |")
    lines += [
        "",
        "Speed ratios (median curl time ÷ median llmhost time; 1.00 = as fast as curl):",
        "",
        f"- llmhost ÷ curl (the issue's comparison: durable pull vs plain curl): "
        f"**{med['curl'] / med['llmhost']:.2f}**",
        f"- llmhost ÷ curl+fsync (both durable): **{med['curl+fsync'] / med['llmhost']:.2f}**",
        f"- llmhost download ÷ curl: {med['curl'] / med['llmhost download']:.2f}",
        "",
        "Runs in order (llmhost: model-info call, download + hash, then verify/GGUF check/fsync/rename/"
        "register):",
        "",
        "```",
        *log,
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
