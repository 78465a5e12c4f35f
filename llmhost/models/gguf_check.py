"""GGUF validation and inspection, before llama.cpp ever sees a file.

llama.cpp aborts or crashes on some malformed files, and its errors are vague ("failed to load model").
``inspect_gguf`` checks a file with cheap header reads and ``gguf.GGUFReader`` (which memory-maps the
file and never reads tensor data), and turns every problem into a one-line
:class:`~llmhost.errors.InvalidModelFileError` (a 400 at the API) that names the file and what is wrong
with it: not a regular file, not GGUF, unsupported version, absurd header counts, unparsable metadata,
arrays of arrays, no ``general.architecture``, no tensors, tokenizer arrays that disagree (llama.cpp
indexes scores and token types by token id), tensor infos llama.cpp's loader would reject (more than
four dimensions, a dimension of 0 or past int64, an element count past int64, an unknown type, rows that
are not whole quantization blocks, offsets out of sequence, names too long for ggml), or truncated
(tensor data past the end of the file). A missing or unreadable file is a plain
:class:`~llmhost.errors.ModelError`: that is the host's problem, not the file's.

Metadata arrays (the vocabulary) are stepped over, not decoded: Gemma 3's 262k-token vocabulary takes
GGUFReader ~20 s and >1 GB to materialize, and ~0.1 s to skip. Every array's length is bounded when its
header is read, before a single element is looked at: by the bytes left in the file, by a per-key cap for
the tokenizer arrays, and by ggml's own limit for the rest; an array of arrays is refused outright (llama.cpp
cannot load one), so no claimed length makes the check slow or large.

On success it returns a :class:`GGUFInfo` summary (architecture, parameter count, quantization,
context length, chat template, scalar metadata) for the registry and ``llmhost show``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
import struct
import sys
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import gguf
import numpy as np
import numpy.typing as npt

from llmhost.errors import InvalidModelFileError, ModelError

log = logging.getLogger(__name__)

__all__ = ["GGUFInfo", "inspect_gguf", "inspect_gguf_cached"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = frozenset({2, 3})
HEADER_SIZE = 24  # magic (4) + version (4) + tensor count (8) + metadata KV count (8)
MAX_TENSOR_COUNT = 1_000_000
MAX_KV_COUNT = 100_000
MAX_KEY_LENGTH = 65_536  # real keys are tens of bytes; a longer "key" is a garbage length field
MAX_ARRAY_ELEMENTS = 1 << 30  # ggml's GGUF_MAX_ARRAY_ELEMENTS
MAX_VOCAB_TOKENS = 1 << 22  # 16x the largest vocabulary shipped (Gemma 3: 262,144)
MERGES_PER_TOKEN = 8  # Llama 3 has ~2.2 BPE merges per token, GPT-2 and Qwen fewer than one
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # tensor names are char[64] in ggml, NUL included
INT64_MAX = (1 << 63) - 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset (empty name, no dims)
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, a one-byte value

TOKENS_KEY = "tokenizer.ggml.tokens"
SCORES_KEY = "tokenizer.ggml.scores"
TOKEN_TYPE_KEY = "tokenizer.ggml.token_type"
MERGES_KEY = "tokenizer.ggml.merges"
# Caps checked from the array header alone; scores and token types must match the token count anyway.
_ARRAY_CAPS = {
    TOKENS_KEY: MAX_VOCAB_TOKENS,
    SCORES_KEY: MAX_VOCAB_TOKENS,
    TOKEN_TYPE_KEY: MAX_VOCAB_TOKENS,
    MERGES_KEY: MERGES_PER_TOKEN * MAX_VOCAB_TOKENS,
}

MetadataValue = str | int | float | bool
_FieldParts = tuple[int, list[npt.NDArray[Any]], list[int], list[gguf.GGUFValueType]]


@dataclass(frozen=True)
class GGUFInfo:
    """What llmhost knows about a valid GGUF model file."""

    path: Path
    size_bytes: int
    version: int
    tensor_count: int
    architecture: str  # general.architecture
    name: str | None  # general.name
    parameter_count: int  # sum of element counts of all tensors
    quantization: str  # e.g. "Q4_K_M", "F32", "Q8_0"
    context_length: int | None  # {arch}.context_length
    embedding_length: int | None
    block_count: int | None
    head_count_kv: int | None
    chat_template: str | None  # tokenizer.chat_template
    license: str | None  # general.license
    metadata: Mapping[str, MetadataValue] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def embedding_only(self) -> bool:
        """An embedding model (BERT and its kin): its attention is not causal, so it cannot generate."""
        return self.metadata.get(f"{self.architecture}.attention.causal") is False


class _Truncated(Exception):
    """Raised inside the reader when a read would go past the end of the file."""

    def __init__(self, needed: int, have: int) -> None:
        super().__init__(f"truncated: expected at least {needed} bytes, file has {have}")
        self.needed = needed
        self.have = have


class _Rejected(Exception):
    """Raised inside the reader for a problem whose message is already the one-line diagnosis."""


class _CheckedReader(gguf.GGUFReader):
    """``GGUFReader`` whose every read is bounds-checked, so truncation is reported as such, and whose
    arrays are stepped over with their lengths bounded up front."""

    def _get(
        self,
        offset: int,
        dtype: Any,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> Any:
        end = int(offset) + int(np.dtype(dtype).itemsize) * int(count)
        size = int(self.data.nbytes)
        if end > size:
            raise _Truncated(end, size)
        return super()._get(offset, dtype, count, override_order)

    def _build_fields(self, offs: int, count: int) -> int:
        # GGUFReader's loop, with the key in hand while its value is read: arrays are stepped over
        # (GGUFReader builds numpy arrays for every element of every array: 262k tokens, scores and types
        # for Gemma take ~20 s and >1 GB) and their lengths bounded per key before any element is read.
        for _ in range(count):
            orig_offs = offs
            key_len = self._get(offs, np.uint64)
            key_data = self._get(offs + 8, np.uint8, int(key_len[0]))  # a view: no copy yet
            if int(key_len[0]) > MAX_KEY_LENGTH:
                raise _Rejected(
                    f"metadata key of {int(key_len[0])} bytes at offset {offs} is too long "
                    f"(at most {MAX_KEY_LENGTH})"
                )
            offs += 8 + int(key_len[0])
            key = bytes(key_data).decode("utf-8")
            raw_type = self._get(offs, np.uint32)
            offs += 4
            if int(raw_type[0]) == gguf.GGUFValueType.ARRAY:
                size, value_parts, idxs, types = self._array_parts(key, offs)
            else:
                size, value_parts, idxs, types = self._get_field_parts(offs, int(raw_type[0]))
            field = gguf.ReaderField(
                orig_offs, key, [key_len, key_data, raw_type, *value_parts], [i + 3 for i in idxs], types
            )
            self._push_field(field, skip_sum=True)
            offs += size
        return offs

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> _FieldParts:
        try:
            gguf.GGUFValueType(int(raw_type))
        except ValueError:
            raise ValueError(f"unknown metadata value type {int(raw_type)}") from None
        return super()._get_field_parts(orig_offs, raw_type)

    def _array_parts(self, key: str, orig_offs: int) -> _FieldParts:
        """Step over the array value of ``key`` at ``orig_offs``; its field keeps only the (element type,
        length) header parts, which is all the checks need."""
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        try:
            itype = gguf.GGUFValueType(int(raw_itype[0]))
        except ValueError:
            raise ValueError(f"unknown metadata array element type {int(raw_itype[0])}") from None
        if itype == gguf.GGUFValueType.ARRAY:
            raise _Rejected(f"metadata key '{key}' is an array of arrays, which llama.cpp cannot load")
        count = int(alen[0])
        cap = _ARRAY_CAPS.get(key, MAX_ARRAY_ELEMENTS)
        if count > cap:
            raise _Rejected(f"{key} has {count} entries, more than {cap}")
        offs = orig_offs + 12
        size = int(self.data.nbytes)
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is not None:
            offs += int(np.dtype(nptype).itemsize) * count
            if offs > size:
                raise _Truncated(offs, size)
        else:  # STRING, the one other element type left
            if offs + 8 * count > size:  # every string has at least its 8-byte length
                raise _Truncated(offs + 8 * count, size)
            host_is_little = sys.byteorder == "little"
            little = host_is_little if self.byte_order == "I" else not host_is_little
            unpack_len = struct.Struct("<Q" if little else ">Q").unpack_from
            buf = self.data.data  # memoryview over the map: no copy
            for _ in range(count):
                if offs + 8 > size:
                    raise _Truncated(offs + 8, size)
                (slen,) = unpack_len(buf, offs)
                offs += 8 + slen
                if offs > size:
                    raise _Truncated(offs, size)
        return offs - orig_offs, [raw_itype, alen], [], [gguf.GGUFValueType.ARRAY, itype]

    def _get_tensor_info_field(self, orig_offs: int) -> Any:
        # Before GGUFReader reads the dimensions: ggml's limits on the name and the number of dimensions.
        name_len = int(self._get(orig_offs, np.uint64)[0])
        if name_len >= GGML_MAX_NAME:
            raise _Rejected(
                f"tensor name of {name_len} bytes at offset {orig_offs} is too long for ggml "
                f"(at most {GGML_MAX_NAME - 1})"
            )
        n_dims = int(self._get(orig_offs + 8 + name_len, np.uint32)[0])
        if n_dims > GGML_MAX_DIMS:
            name = bytes(self._get(orig_offs + 8, np.uint8, name_len)).decode("utf-8", errors="replace")
            raise _Rejected(f"tensor '{name}' has {n_dims} dimensions, more than {GGML_MAX_DIMS}")
        return super()._get_tensor_info_field(orig_offs)

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        # The checks llama.cpp's gguf loader makes, plus the size the whole file should have, before the
        # reader maps anything: known types, dimensions of 1 to int64 and an element count int64 holds,
        # whole blocks per row, tensors packed in order at aligned offsets, and all data inside the file.
        alignment = int(self.alignment)
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment} is not a power of two")
        size = int(self.data.nbytes)
        expected_offset = needed = 0
        for tensor_field in fields:
            _nlen, name_data, _ndims, dims, raw_dtype, offset_tensor = tensor_field.parts
            name = bytes(name_data).decode("utf-8", errors="replace")
            try:
                qtype = gguf.GGMLQuantizationType(int(raw_dtype[0]))
                block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
            except (ValueError, KeyError):
                raise ValueError(f"tensor '{name}' has unknown type {int(raw_dtype[0])}") from None
            shape = [int(dim) for dim in dims.tolist()]
            n_elems = 1
            for i, dim in enumerate(shape):
                if not 0 < dim <= INT64_MAX:  # ggml reads int64: the top bit set is a negative size
                    raise _Rejected(f"tensor '{name}' dimension {i} is {dim} (must be 1 to {INT64_MAX})")
                n_elems *= dim
                if n_elems > INT64_MAX:
                    raise _Rejected(f"tensor '{name}' has more elements than an int64 holds (shape {shape})")
            if shape and shape[0] % block_size:
                raise ValueError(
                    f"tensor '{name}' rows of {shape[0]} elements are not whole {qtype.name} blocks"
                )
            offset = int(offset_tensor[0])
            if offset != expected_offset:
                raise ValueError(f"tensor '{name}' has data offset {offset}, expected {expected_offset}")
            n_bytes = n_elems * type_size // block_size
            expected_offset += -(-n_bytes // alignment) * alignment
            needed = max(needed, int(start_offs) + offset + n_bytes)
        if needed > size:
            raise _Truncated(needed, size)
        super()._build_tensors(start_offs, fields)


def _fail(path: Path, problem: str) -> InvalidModelFileError:
    return InvalidModelFileError(f"invalid model file {path}: {problem}")


def _unreadable(path: Path, exc: OSError) -> ModelError:
    # The host's problem (permissions, I/O), not the file's: a plain ModelError, not a 400.
    return ModelError(f"cannot read model file {path} ({getattr(exc, 'strerror', None) or exc})")


def _read_header(path: Path) -> tuple[int, int, int, int]:
    """Cheap pre-parse checks; returns (file size, version, tensor count, KV count)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    size = st.st_size
    if size == 0:
        raise _fail(path, "file is empty")
    if len(header) >= 4 and header[:4] != GGUF_MAGIC:
        raise _fail(path, f"not a GGUF file (bad magic {header[:4]!r}, expected {GGUF_MAGIC!r})")
    if size < HEADER_SIZE or len(header) < HEADER_SIZE:
        raise _fail(
            path, f"truncated: expected at least {HEADER_SIZE} bytes (the GGUF header), file has {size}"
        )
    order = "<"
    (version,) = struct.unpack_from("<I", header, 4)
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        order = ">"
        (version,) = struct.unpack_from(">I", header, 4)
    if version not in SUPPORTED_VERSIONS:
        raise _fail(path, f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count, kv_count = struct.unpack_from(order + "QQ", header, 8)
    if tensor_count > MAX_TENSOR_COUNT:
        raise _fail(path, f"corrupt header: tensor count {tensor_count} exceeds {MAX_TENSOR_COUNT}")
    if kv_count > MAX_KV_COUNT:
        raise _fail(path, f"corrupt header: metadata key count {kv_count} exceeds {MAX_KV_COUNT}")
    if tensor_count == 0:
        raise _fail(path, "contains no tensors")
    # Each tensor info and each key takes some bytes: a file too short for its counts is cut (or its
    # counts are garbage), and refusing it here keeps the reader's per-entry objects bounded by the size.
    least = HEADER_SIZE + _MIN_TENSOR_INFO_BYTES * tensor_count + _MIN_KV_BYTES * kv_count
    if least > size:
        raise _fail(
            path,
            f"truncated: {tensor_count} tensors and {kv_count} metadata keys need at least {least} "
            f"bytes, file has {size}",
        )
    return size, int(version), int(tensor_count), int(kv_count)


def _scalar(reader_field: Any) -> MetadataValue | None:
    """The value of a scalar (non-array) metadata field, or None."""
    types = reader_field.types
    if not types or len(types) != 1:
        return None
    vtype = types[0]
    part = reader_field.parts[-1]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    if vtype == gguf.GGUFValueType.ARRAY or len(part) != 1:
        return None
    value = part[0].item()
    if vtype == gguf.GGUFValueType.BOOL:
        return bool(value)
    if isinstance(value, bool | int | float):
        return value
    return None


def _quantization(metadata: Mapping[str, MetadataValue], tensors: list[Any]) -> str:
    file_type = metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            ftype = gguf.LlamaFileType(file_type)
        except ValueError:
            ftype = None
        if ftype is not None and ftype != gguf.LlamaFileType.GUESSED:
            return str(ftype.name).removeprefix("MOSTLY_").removeprefix("ALL_")
    by_bytes: Counter[str] = Counter()
    for tensor in tensors:
        by_bytes[str(tensor.tensor_type.name)] += int(tensor.n_bytes)
    return by_bytes.most_common(1)[0][0] if by_bytes else "unknown"


def _int_or_none(value: MetadataValue | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: MetadataValue | None) -> str | None:
    return value if isinstance(value, str) else None


def _describe_type(reader_field: Any) -> str:
    types = list(reader_field.types)
    if len(types) == 2 and types[0] == gguf.GGUFValueType.ARRAY:
        return f"an array of {types[1].name}"
    return f"a {types[0].name} value" if types else "empty"


def _array_of(fields: Mapping[str, Any], key: str, allowed: tuple[gguf.GGUFValueType, ...]) -> int | None:
    """The length of the array ``key`` (None when absent); raises _Rejected for another type."""
    reader_field = fields.get(key)
    if reader_field is None:
        return None
    types = list(reader_field.types)
    if len(types) != 2 or types[0] != gguf.GGUFValueType.ARRAY or types[1] not in allowed:
        names = " or ".join(t.name for t in allowed)
        raise _Rejected(f"{key} must be an array of {names} (it is {_describe_type(reader_field)})")
    return int(reader_field.parts[-1][0])


def _check_tokenizer(fields: Mapping[str, Any]) -> None:
    """The vocabulary arrays agree: llama.cpp reads ``scores[i]`` and ``token_type[i]`` for every token
    id ``i``, so a shorter array is an out-of-bounds read in native code, a longer one a converter bug."""
    string, f32, i32 = gguf.GGUFValueType.STRING, gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.INT32
    n_tokens = _array_of(fields, TOKENS_KEY, (string,))
    for key, allowed in ((SCORES_KEY, (f32, i32)), (TOKEN_TYPE_KEY, (i32,))):
        count = _array_of(fields, key, allowed)
        if count is None:
            continue
        if n_tokens is None:
            raise _Rejected(f"{key} is present but there is no {TOKENS_KEY}")
        if count != n_tokens:
            raise _Rejected(
                f"{key} has {count} entries for {n_tokens} tokens ({TOKENS_KEY}); they must match"
            )
    n_merges = _array_of(fields, MERGES_KEY, (string,))
    if n_merges is not None and n_merges > MERGES_PER_TOKEN * (n_tokens or 0):
        raise _Rejected(
            f"{MERGES_KEY} has {n_merges} entries, more than {MERGES_PER_TOKEN} per token for "
            f"{n_tokens or 0} tokens"
        )


@dataclass(frozen=True)
class _Checked:
    """A check's result with what the summary cache needs to know the file is still the one checked."""

    info: GGUFInfo
    header_bytes: int  # the bytes the check read: everything before the tensor data
    header_sha256: str


def inspect_gguf(path: Path | str) -> GGUFInfo:
    """Validate the GGUF file at ``path`` and summarize it.

    Raises :class:`~llmhost.errors.InvalidModelFileError` when the file is not a usable GGUF and a plain
    :class:`~llmhost.errors.ModelError` when it is missing or cannot be read.
    """
    return _inspect(Path(path)).info


def _inspect(path: Path) -> _Checked:
    size, version, tensor_count, _kv_count = _read_header(path)
    try:
        reader = _CheckedReader(os.fspath(path), "r")
    except _Truncated as exc:
        if exc.needed > max(exc.have * 1024, 1 << 40):  # no cut file looks like this; a garbage length does
            raise _fail(
                path,
                f"corrupt header: a length or offset field points past the end of the file "
                f"(needs {exc.needed} bytes, file has {exc.have})",
            ) from None
        raise _fail(path, str(exc)) from None
    except _Rejected as exc:
        raise _fail(path, str(exc)) from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    except UnicodeDecodeError:
        raise _fail(path, "corrupt metadata: a key, string or tensor name is not valid UTF-8") from None
    except KeyError as exc:  # duplicate metadata key
        raise _fail(path, f"corrupt metadata ({exc.args[0] if exc.args else exc})") from None
    except Exception as exc:  # GGUFReader raises ValueError, IndexError, OverflowError, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"corrupt metadata or tensor info ({detail})") from None

    try:
        fields = cast(Mapping[str, Any], reader.fields)
        tensors = cast(list[Any], reader.tensors)
        _check_tokenizer(fields)
        metadata: dict[str, MetadataValue] = {}
        for key, reader_field in fields.items():
            if key.startswith("GGUF."):
                continue
            value = _scalar(reader_field)
            if value is not None:
                metadata[key] = value

        arch = _str_or_none(metadata.get("general.architecture"))
        if not arch:
            raise _fail(path, "missing general.architecture metadata")
        if not tensors:
            raise _fail(path, "contains no tensors")
        parameter_count = sum(int(t.n_elements) for t in tensors)
        info = GGUFInfo(
            path=path,
            size_bytes=size,
            version=version,
            tensor_count=tensor_count,
            architecture=arch,
            name=_str_or_none(metadata.get("general.name")),
            parameter_count=parameter_count,
            quantization=_quantization(metadata, tensors),
            context_length=_int_or_none(metadata.get(f"{arch}.context_length")),
            embedding_length=_int_or_none(metadata.get(f"{arch}.embedding_length")),
            block_count=_int_or_none(metadata.get(f"{arch}.block_count")),
            head_count_kv=_int_or_none(metadata.get(f"{arch}.attention.head_count_kv")),
            chat_template=_str_or_none(metadata.get("tokenizer.chat_template")),
            license=_str_or_none(metadata.get("general.license")),
            metadata=MappingProxyType(metadata),
        )
        # Hash the very bytes just parsed (the map), not a second read that could see another file.
        header_bytes = min(int(reader.data_offset), int(reader.data.nbytes))
        header_sha256 = hashlib.sha256(reader.data[:header_bytes].data).hexdigest()
        return _Checked(info, header_bytes, header_sha256)
    except ModelError:
        raise
    except _Rejected as exc:
        raise _fail(path, str(exc)) from None
    except Exception as exc:
        raise _fail(path, f"unreadable metadata ({type(exc).__name__}: {exc})") from None


# -- the summary cache ----------------------------------------------------------------------------------

_INFO_CACHE_VERSION = 2
_HASH_BLOCK = 1 << 20


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev}


def _sha256_of_prefix(path: Path, n_bytes: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = n_bytes
        while remaining > 0:
            block = f.read(min(remaining, _HASH_BLOCK))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def inspect_gguf_cached(path: Path | str, digest: str, cache_dir: Path) -> GGUFInfo:
    """:func:`inspect_gguf`, remembered per content digest in ``cache_dir``.

    Checking Gemma 3's 262k-token vocabulary again costs 0.1-0.3 s, up to a fifth of a model load. A
    store blob's name is its SHA-256, but nothing stops the file from being rewritten in place, so an
    entry is trusted only for the same file (device and inode), the same size and mtime, and the same
    bytes before the tensor data: those bytes and the size are all the check reads, so a file that
    matches them passes or fails exactly as it did. Hashing them again costs ~13 ms for Gemma 3's
    6.5 MB header. Anything else (a missing, unreadable, old-format or mismatched entry) is checked
    afresh.
    """
    path = Path(path)
    entry = cache_dir / f"{digest.replace(':', '-')}.json"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        raw = json.loads(entry.read_text())
        file_key = raw.pop("file")
        if raw.pop("cache_version") != _INFO_CACHE_VERSION or file_key.pop("stat") != _stat_key(st):
            raise ValueError("stale")
        if _sha256_of_prefix(path, int(file_key["header_bytes"])) != file_key["header_sha256"]:
            raise ValueError("changed")
        metadata = raw.pop("metadata")
        return GGUFInfo(path=path, metadata=MappingProxyType(metadata), **raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    checked = _inspect(path)  # stat taken before: a file changed meanwhile misses next time
    info = checked.info
    record: dict[str, Any] = {
        f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name not in {"path", "metadata"}
    }
    record.update(
        cache_version=_INFO_CACHE_VERSION,
        metadata=dict(info.metadata),
        file={
            "stat": _stat_key(st),
            "header_bytes": checked.header_bytes,
            "header_sha256": checked.header_sha256,
        },
    )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry)
    except OSError as exc:  # a read-only data dir only costs the speed-up
        log.debug("could not cache GGUF info in %s: %s", cache_dir, exc)
    return info
