"""The content-addressed model store: imports are verified, deduplicated and atomic."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TypeVar

import pytest

import llmhost.models.store as store_mod
from llmhost.errors import ModelError, ModelNotFoundError, RequestError
from llmhost.models.registry import ModelRecord, Registry
from llmhost.models.store import MODEL_NAME_RE, ModelStore, validate_model_name
from tests.models.conftest import PatchOnlyIn
from tests.support import sha256_of
from tests.tiny_gguf import truncate_copy, write_not_gguf, write_tiny_llama_gguf

T = TypeVar("T")


def blob_listing(store: ModelStore) -> dict[str, tuple[int, int]]:
    """Every file in blobs/ (temporary ones included) with its inode and mtime, to prove nothing changed."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.blobs_dir.iterdir()}


def split_into_parts(src: Path, directory: Path, n: int) -> list[Path]:
    data = src.read_bytes()
    step = len(data) // n + 1
    parts = []
    for i in range(n):
        part = directory / f"model.gguf.part{i:02d}"
        part.write_bytes(data[i * step : (i + 1) * step])
        parts.append(part)
    return parts


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two different valid tiny GGUF files."""
    directory = tmp_path_factory.mktemp("tiny")
    first = write_tiny_llama_gguf(directory / "tiny.gguf", seed=0)
    second = write_tiny_llama_gguf(directory / "tiny2.gguf", seed=1, name="tiny-two")
    return first, second


@pytest.fixture
def tiny(tiny_models: tuple[Path, Path]) -> Path:
    return tiny_models[0]


@pytest.fixture
def tiny2(tiny_models: tuple[Path, Path]) -> Path:
    return tiny_models[1]


# -- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["gemma3:270m", "tiny", "org/repo:q4_k_m", "hf.co/org/repo:Q4_K_M", "a", "llama-3.2_1b", "x" * 128],
)
def test_valid_model_names_are_accepted(name: str) -> None:
    assert validate_model_name(name) == name
    assert MODEL_NAME_RE.match(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 129,
        "/abs",
        "../escape",
        "org/../repo",
        "a..b",
        "a:b:c",
        "org/",
        "a//b",
        "-flag",
        ".hidden",
        "name:",
        "space name",
        "tab\tname",
        "newline\n",
        "semi;colon",
        "back\\slash",
        "ünicode",
        "repo:tag/with/slash",
    ],
)
def test_invalid_model_names_are_rejected(name: str) -> None:
    with pytest.raises(RequestError) as excinfo:
        validate_model_name(name)
    assert excinfo.value.param == "name"
    assert "invalid model name" in str(excinfo.value)


def test_import_with_an_invalid_name_touches_nothing(store: ModelStore, tiny: Path) -> None:
    with pytest.raises(RequestError):
        store.import_file(tiny, "../evil")
    with pytest.raises(RequestError):
        store.import_parts([tiny], "bad name", source="test")
    assert store.registry.list() == []
    assert blob_listing(store) == {}


# -- importing ------------------------------------------------------------------------------------------


def test_import_file_stores_the_blob_at_its_content_address(store: ModelStore, tiny: Path) -> None:
    record = store.import_file(tiny, "tiny")

    expected_hex = sha256_of(tiny)
    assert record.digest == f"sha256:{expected_hex}"
    assert record.path == store.blobs_dir.resolve() / f"sha256-{expected_hex}"
    assert store.blob_path(record.digest) == store.blobs_dir / f"sha256-{expected_hex}"
    assert record.path.read_bytes() == tiny.read_bytes()
    assert record.size_bytes == tiny.stat().st_size
    assert record.architecture == "llama"
    assert record.quantization == "F32"
    assert record.context_length == 2048
    assert record.parameter_count > 0
    assert record.source == f"import:{tiny.resolve()}"
    assert record.created_at.tzinfo is not None and record.created_at.utcoffset() == UTC.utcoffset(None)
    assert store.registry.get("tiny") == record
    assert set(blob_listing(store)) == {f"sha256-{expected_hex}"}


def test_import_records_chat_template_and_given_source(store: ModelStore, tmp_path: Path) -> None:
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    model = write_tiny_llama_gguf(tmp_path / "chat.gguf", chat_template=template)
    record = store.import_file(model, "chat", source="hf:org/repo/chat.gguf", default_license="mit")
    assert record.chat_template == template
    assert record.source == "hf:org/repo/chat.gguf"
    assert record.license == "mit"  # the file has no general.license, so the fallback is recorded


def test_the_same_file_under_two_names_is_stored_once(store: ModelStore, tiny: Path) -> None:
    first = store.import_file(tiny, "tiny")
    second = store.import_file(tiny, "tiny:copy")
    assert first.digest == second.digest and first.path == second.path
    assert len(blob_listing(store)) == 1
    assert [r.name for r in store.registry.list()] == ["tiny", "tiny:copy"]


@pytest.mark.parametrize("form", ["bare", "prefixed", "upper"])
def test_a_matching_expected_checksum_is_accepted(store: ModelStore, tiny: Path, form: str) -> None:
    hexdigest = sha256_of(tiny)
    expected = {"bare": hexdigest, "prefixed": f"sha256:{hexdigest}", "upper": hexdigest.upper()}[form]
    assert store.import_file(tiny, "tiny", expected_sha256=expected).digest == f"sha256:{hexdigest}"


def test_a_wrong_expected_checksum_registers_nothing_and_leaves_no_temp_file(
    store: ModelStore, tiny: Path
) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelError, match=f"checksum mismatch: expected {wrong}, got {sha256_of(tiny)}"):
        store.import_file(tiny, "tiny", expected_sha256=wrong)
    assert store.registry.list() == []
    assert blob_listing(store) == {}


def test_a_malformed_expected_checksum_is_rejected(store: ModelStore, tiny: Path) -> None:
    with pytest.raises(ModelError, match="invalid expected sha256"):
        store.import_file(tiny, "tiny", expected_sha256="abc")
    assert blob_listing(store) == {}


def test_import_parts_concatenates_the_chunks(store: ModelStore, tiny: Path, tmp_path: Path) -> None:
    parts = split_into_parts(tiny, tmp_path, 3)
    seen: list[tuple[int, int]] = []
    record = store.import_parts(
        parts,
        "tiny:parts",
        source="embedded:test",
        expected_sha256=sha256_of(tiny),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert record.digest == f"sha256:{sha256_of(tiny)}"
    assert record.path.read_bytes() == tiny.read_bytes()
    assert record.source == "embedded:test"
    assert seen[-1] == (tiny.stat().st_size, tiny.stat().st_size)
    assert set(blob_listing(store)) == {f"sha256-{sha256_of(tiny)}"}


def test_import_parts_with_a_missing_part_writes_nothing(
    store: ModelStore, tiny: Path, tmp_path: Path
) -> None:
    parts = split_into_parts(tiny, tmp_path, 2)
    parts[1].unlink()
    with pytest.raises(ModelError, match="not found"):
        store.import_parts(parts, "tiny", source="test")
    with pytest.raises(ModelError, match="no part"):
        store.import_parts([], "tiny", source="test")
    assert store.registry.list() == []
    assert blob_listing(store) == {}


# -- rejection leaves everything as it was ----------------------------------------------------------------


@pytest.fixture
def populated(store: ModelStore, tiny: Path) -> tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]]:
    """A store holding ``tiny``, with a snapshot of its blobs directory."""
    record = store.import_file(tiny, "tiny")
    return store, record, blob_listing(store)


def assert_untouched(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]],
) -> None:
    store, record, listing = populated
    assert store.registry.list() == [record]
    assert blob_listing(store) == listing
    assert sha256_of(record.path) == record.digest.removeprefix("sha256:")


def test_a_non_gguf_file_is_rejected_before_anything_is_written(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]], tmp_path: Path
) -> None:
    store = populated[0]
    junk = write_not_gguf(tmp_path / "junk.gguf")
    with pytest.raises(ModelError):
        store.import_file(junk, "junk")
    with pytest.raises(ModelError):
        store.import_file(junk, "tiny")  # not even replacing an existing name
    assert_untouched(populated)


def test_a_truncated_gguf_is_rejected(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]], tiny: Path, tmp_path: Path
) -> None:
    store = populated[0]
    short = truncate_copy(tiny, tmp_path / "short.gguf", tiny.stat().st_size // 2)
    with pytest.raises(ModelError):
        store.import_file(short, "short")
    assert_untouched(populated)


def test_a_missing_file_is_rejected(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]], tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="not found"):
        populated[0].import_file(tmp_path / "nope.gguf", "nope")
    assert_untouched(populated)


def test_parts_that_assemble_into_a_broken_file_are_rejected_after_the_copy(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]], tiny: Path, tmp_path: Path
) -> None:
    store = populated[0]
    parts = split_into_parts(tiny, tmp_path, 3)[:2]  # the last chunk is missing: a truncated model
    with pytest.raises(ModelError, match="cannot import model 'tiny'"):
        store.import_parts(parts, "tiny", source="test")
    junk = [write_not_gguf(tmp_path / "junk.part")]
    with pytest.raises(ModelError):
        store.import_parts(junk, "junk", source="test")
    assert_untouched(populated)


def test_a_failure_in_the_middle_of_the_copy_leaves_no_trace(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]], tiny2: Path, tmp_path: Path
) -> None:
    # The progress callback runs between blocks, so raising from it interrupts the copy half-way.
    store = populated[0]
    parts = split_into_parts(tiny2, tmp_path, 3)

    def crash(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_parts(parts, "tiny", source="test", progress=crash)
    assert_untouched(populated)


def test_a_full_disk_becomes_a_model_error_and_leaves_no_trace(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]],
    tiny2: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_only_in: PatchOnlyIn,
) -> None:
    # Simulate ENOSPC: the store's fsync, which runs after the data is written, fails (for it alone).
    store = populated[0]

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch_only_in(store_mod, "os", fsync=no_space)
    assert os.fsync is not no_space  # the process's own os is untouched
    with pytest.raises(ModelError, match="not enough disk space"):
        store.import_file(tiny2, "tiny2")
    monkeypatch.undo()
    assert_untouched(populated)


def test_a_crash_at_the_final_rename_leaves_no_trace(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]],
    tiny2: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_only_in: PatchOnlyIn,
) -> None:
    # Simulate the OS failing the store's atomic rename (os.replace, for the store module alone).
    store = populated[0]

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    patch_only_in(store_mod, "os", replace=failing_replace)
    with pytest.raises(ModelError, match="cannot import model 'tiny'"):
        store.import_file(tiny2, "tiny")
    monkeypatch.undo()
    assert_untouched(populated)


def test_a_registry_failure_removes_the_new_blob(
    populated: tuple[ModelStore, ModelRecord, dict[str, tuple[int, int]]],
    tiny2: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = populated[0]

    def failing_put(record: ModelRecord) -> None:
        raise ModelError("model registry error: database is locked")

    monkeypatch.setattr(store.registry, "put", failing_put)
    with pytest.raises(ModelError, match="locked"):
        store.import_file(tiny2, "tiny")
    monkeypatch.undo()
    assert_untouched(populated)


# -- replacing and removing -------------------------------------------------------------------------------


def test_reimporting_a_name_replaces_it_and_deletes_the_unused_old_blob(
    store: ModelStore, tiny: Path, tiny2: Path
) -> None:
    old = store.import_file(tiny, "tiny")
    new = store.import_file(tiny2, "tiny")
    assert store.registry.get("tiny") == new
    assert new.digest != old.digest
    assert not old.path.exists()
    assert set(blob_listing(store)) == {new.path.name}


def test_reimporting_a_name_keeps_the_old_blob_while_another_name_uses_it(
    store: ModelStore, tiny: Path, tiny2: Path
) -> None:
    old = store.import_file(tiny, "tiny")
    store.import_file(tiny, "tiny:alias")
    new = store.import_file(tiny2, "tiny")
    assert old.path.exists() and new.path.exists()
    assert store.registry.get("tiny:alias").digest == old.digest


def test_reimporting_the_same_file_keeps_the_blob(store: ModelStore, tiny: Path) -> None:
    first = store.import_file(tiny, "tiny")
    inode = first.path.stat().st_ino
    second = store.import_file(tiny, "tiny")
    assert second.digest == first.digest
    assert second.path.stat().st_ino == inode
    assert len(blob_listing(store)) == 1


def test_registry_remove_returns_the_record(store: ModelStore, tiny: Path) -> None:
    record = store.import_file(tiny, "tiny")
    assert store.registry.remove("tiny") == record
    assert store.registry.find("tiny") is None


def test_store_remove_deletes_the_blob_only_when_unused(store: ModelStore, tiny: Path) -> None:
    record = store.import_file(tiny, "tiny")
    store.import_file(tiny, "tiny:alias")
    assert store.remove("tiny") == record
    assert record.path.exists()
    store.remove("tiny:alias")
    assert not record.path.exists()
    assert store.registry.list() == []
    with pytest.raises(ModelNotFoundError):
        store.remove("tiny")


def test_a_damaged_blob_is_replaced_by_a_fresh_import(store: ModelStore, tiny: Path) -> None:
    record = store.import_file(tiny, "tiny")
    record.path.write_bytes(b"damaged")
    again = store.import_file(tiny, "tiny")
    assert again.path.read_bytes() == tiny.read_bytes()


# -- odds and ends ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest", ["sha256:abc", "md5:" + "a" * 64, "sha256:" + "A" * 64, "../../etc/passwd"]
)
def test_blob_path_rejects_malformed_digests(store: ModelStore, digest: str) -> None:
    with pytest.raises(ModelError, match="invalid digest"):
        store.blob_path(digest)


def test_leftover_temporary_files_from_a_dead_import_are_cleaned_up(
    tmp_path: Path, registry: Registry
) -> None:
    blobs = tmp_path / "models" / "blobs"  # a store made below, after the files (not the fixture's)
    blobs.mkdir(parents=True)
    stale = blobs / ".import-dead.partial"
    fresh = blobs / ".import-live.partial"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    ModelStore(tmp_path / "models", registry)
    assert not stale.exists()
    assert fresh.exists()  # may belong to an import still running in another process


def test_adopt_file_moves_a_verified_download_into_place(store: ModelStore) -> None:
    staged = write_tiny_llama_gguf(store.models_dir / "downloads" / "x.partial", seed=11)
    digest = sha256_of(staged)
    record = store.adopt_file(staged, "adopted", sha256=digest, source="test")
    assert record.digest == f"sha256:{digest}"
    assert not staged.exists() and store.blob_path(record.digest).is_file()
    assert store.registry.get("adopted").digest == record.digest


def test_adopt_file_rejects_a_non_gguf_and_registers_nothing(store: ModelStore) -> None:
    (store.models_dir / "downloads").mkdir(parents=True)
    staged = write_not_gguf(store.models_dir / "downloads" / "y.partial")
    with pytest.raises(ModelError):
        store.adopt_file(staged, "bad", sha256="0" * 64, source="test")
    assert store.registry.find("bad") is None and not staged.exists()
    assert list(store.blobs_dir.iterdir()) == []


def test_adopting_the_stored_blob_itself_keeps_it(store: ModelStore, tiny: Path) -> None:
    """A pull of a file already in the store registers the blob as it is: it must not be consumed."""
    record = store.import_file(tiny, "tiny")
    again = store.adopt_file(record.path, "again", sha256=record.digest, source="test")
    assert again.digest == record.digest
    assert record.path.read_bytes() == tiny.read_bytes()


# -- copy -------------------------------------------------------------------------------------------------


def test_copy_adds_a_name_for_the_same_blob_and_rm_of_the_source_keeps_it(
    store: ModelStore, tiny: Path
) -> None:
    record = store.import_file(tiny, "tiny")
    before = blob_listing(store)
    copy = store.copy("tiny", "org/alias:latest")
    assert (copy.name, copy.digest, copy.path) == ("org/alias:latest", record.digest, record.path)
    assert copy.created_at >= record.created_at
    assert store.registry.get("org/alias:latest") == copy
    assert blob_listing(store) == before  # no file copied or touched

    store.remove("tiny")
    assert [r.name for r in store.registry.list()] == ["org/alias:latest"]
    assert record.path.read_bytes() == tiny.read_bytes()
    store.remove("org/alias:latest")
    assert list(store.blobs_dir.iterdir()) == []


def test_copy_over_an_existing_alias_deletes_its_orphaned_blob(
    store: ModelStore, tiny: Path, tiny2: Path
) -> None:
    first = store.import_file(tiny, "tiny")
    second = store.import_file(tiny2, "prod")
    store.copy("tiny", "prod")
    assert store.registry.get("prod").digest == first.digest
    assert not second.path.exists()  # "prod" was the last name of tiny2's blob
    assert {p.name for p in store.blobs_dir.iterdir()} == {first.path.name}


def test_copy_over_an_alias_keeps_a_blob_another_name_still_uses(
    store: ModelStore, tiny: Path, tiny2: Path
) -> None:
    store.import_file(tiny, "tiny")
    second = store.import_file(tiny2, "prod")
    store.copy("prod", "prod-previous")
    store.copy("tiny", "prod")
    assert store.registry.get("prod-previous").digest == second.digest
    assert second.path.read_bytes() == tiny2.read_bytes()


def test_copy_keeps_a_loaded_blob_until_a_later_copy_finds_it_unloaded(
    store: ModelStore, tiny: Path, tiny2: Path
) -> None:
    store.import_file(tiny, "tiny")
    second = store.import_file(tiny2, "prod")
    loaded = {second.digest}

    def in_use(record: ModelRecord) -> bool:
        return record.digest in loaded

    store.copy("tiny", "prod", in_use=in_use)  # the hot-swap: the old file is still serving
    assert store.registry.find_by_digest(second.digest) == []
    assert second.path.read_bytes() == tiny2.read_bytes()

    store.copy("tiny", "other", in_use=in_use)  # still loaded: still kept
    assert second.path.exists()
    loaded.clear()  # unloaded
    store.copy("tiny", "another", in_use=in_use)
    assert not second.path.exists()


def test_copy_errors_change_nothing(store: ModelStore, tiny: Path) -> None:
    store.import_file(tiny, "tiny")
    before = (store.registry.list(), blob_listing(store))
    with pytest.raises(ModelNotFoundError, match="'missing' not found"):
        store.copy("missing", "x")
    with pytest.raises(RequestError, match="invalid model name") as excinfo:
        store.copy("tiny", "../evil")
    assert excinfo.value.param == "destination"
    assert store.copy("tiny", "tiny") == store.registry.get("tiny")  # onto itself: nothing to do
    assert (store.registry.list(), blob_listing(store)) == before


def _slowed(fn: Callable[..., T], seconds: float) -> Callable[..., T]:
    def slow(*args: object, **kwargs: object) -> T:
        time.sleep(seconds)
        return fn(*args, **kwargs)

    return slow


def test_concurrent_copies_imports_and_removals_keep_the_store_consistent(
    tmp_path: Path, store: ModelStore, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies, imports and removals from several threads, through two stores on one directory (as two
    processes would), keep every name on an intact file and leave no file without a name.

    One thread keeps importing and removing "c"; two others keep pointing "alias" (and "alias2") at
    "c"'s file and then away from it, which deletes that file whenever no other name uses it. Registry
    writes are slowed down to vary the interleavings. A checker takes the lock and verifies that every
    registered name has its file, between commits. (The one interleaving known to corrupt an unlocked
    store is forced deterministically in the next test.)
    """
    third = write_tiny_llama_gguf(tmp_path / "third.gguf", seed=5, name="tiny-three")
    other_registry = Registry(store.registry.db_path)
    other = ModelStore(store.models_dir, other_registry)
    for reg in (store.registry, other_registry):
        for method, seconds in (("put", 0.01), ("copy", 0.001), ("find_by_digest", 0.001)):
            monkeypatch.setattr(reg, method, _slowed(getattr(reg, method), seconds))
    store.import_file(tiny, "a")
    errors: list[BaseException] = []
    rounds = 30
    start = threading.Barrier(4)

    def worker(fn: Callable[[int], object]) -> None:
        try:
            start.wait()
            for i in range(rounds):
                fn(i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def repoint(i: int) -> None:
        with contextlib.suppress(ModelNotFoundError):  # "c" may be gone at that moment
            store.copy("c", "alias")
        time.sleep(0.005)
        store.copy("a", "alias")

    def import_and_remove(i: int) -> None:
        record = other.import_file(third, "c")
        assert record.path.is_file(), "an import registered a file that a copy deleted"
        if i < rounds - 1:
            other.remove("c")

    def repoint_elsewhere(i: int) -> None:  # the same, through the other store
        with contextlib.suppress(ModelNotFoundError):
            other.copy("c", "alias2")
        time.sleep(0.005)
        other.copy("a", "alias2")

    def check(i: int) -> None:
        # Under the commit lock the store is between two commits: every name must have its file then.
        with store._commit_lock():
            missing = [r.name for r in store.registry.list() if not r.path.is_file()]
        assert missing == [], f"names without a file: {missing}"
        time.sleep(0.005)

    threads = [
        threading.Thread(target=worker, args=(fn,))
        for fn in (repoint, import_and_remove, repoint_elsewhere, check)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    other_registry.close()
    assert errors == []

    records = store.registry.list()
    assert {"a", "alias", "c"} <= {r.name for r in records}
    for record in records:
        assert sha256_of(record.path) == record.digest.removeprefix("sha256:"), record.name
    referenced = {store.blob_path(r.digest).name for r in records}
    assert {p.name for p in store.blobs_dir.iterdir()} == referenced  # no orphan, no temporary file


def test_copy_waits_for_an_import_that_registers_the_file_it_would_delete(
    store: ModelStore, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the commit lock prevents: an import finds "c"'s file already stored (only "alias" uses
    it) and is about to register it, when a copy re-points "alias" away. Without the lock the copy would
    delete the file and "c" would name a missing file.

    No timing: the import is held inside its commit until the copy is seen waiting for the lock (or, were
    there no lock, until the copy has already re-pointed "alias"); then the order of the two registry
    writes says whether the copy waited.
    """
    third = write_tiny_llama_gguf(tmp_path / "third.gguf", seed=5, name="tiny-three")
    store.import_file(tiny, "a")
    c = store.import_file(third, "c")
    store.copy("c", "alias")
    store.remove("c")  # "alias" is now the only name of c's file
    other_registry = Registry(store.registry.db_path)  # a second store on the directory, as another process
    other = ModelStore(store.models_dir, other_registry)
    writes: list[str] = []  # the order of the two registry writes
    progressed = threading.Condition()
    in_put, release = threading.Event(), threading.Event()
    real_lock, real_put, real_copy = store_mod._COMMIT_LOCK, other_registry.put, store.registry.copy
    waiters = 0  # threads that found the commit lock taken

    class WatchedLock:
        """The store's commit lock, counting the threads that have to wait for it."""

        def __enter__(self) -> None:
            nonlocal waiters
            if not real_lock.acquire(blocking=False):
                with progressed:
                    waiters += 1
                    progressed.notify_all()
                real_lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            real_lock.release()

    def held_put(record: ModelRecord) -> None:
        in_put.set()
        assert release.wait(30)
        real_put(record)
        writes.append("import registers c")

    def noted_copy(source: str, destination: str) -> tuple[ModelRecord, ModelRecord | None]:
        result = real_copy(source, destination)
        with progressed:
            writes.append(f"copy re-points {destination}")
            progressed.notify_all()
        return result

    monkeypatch.setattr(store_mod, "_COMMIT_LOCK", WatchedLock())
    monkeypatch.setattr(other_registry, "put", held_put)
    monkeypatch.setattr(store.registry, "copy", noted_copy)
    importer = threading.Thread(target=other.import_file, args=(third, "c"))
    importer.start()
    assert in_put.wait(30)  # the import found the file in place and holds the commit lock
    copier = threading.Thread(target=store.copy, args=("a", "alias"))
    copier.start()
    with progressed:
        assert progressed.wait_for(lambda: waiters or writes, timeout=30), "the copy never got to the lock"
    release.set()
    importer.join(30)
    copier.join(30)
    other_registry.close()

    assert not importer.is_alive() and not copier.is_alive()
    assert writes == ["import registers c", "copy re-points alias"], "the copy did not wait for the import"
    assert store.registry.get("alias").digest == store.registry.get("a").digest
    assert store.registry.get("c").digest == c.digest
    assert sha256_of(c.path) == c.digest.removeprefix("sha256:")
