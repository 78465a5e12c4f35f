"""GGUF validation and inspection, before llama.cpp ever sees a file.

llama.cpp aborts or crashes on some malformed files, and its errors are vague ("failed to load model").
``inspect_gguf`` checks a file with cheap header reads and ``gguf.GGUFReader`` (which memory-maps the
file and never reads tensor data), and turns every problem into a one-line
:class:`~llmhost.errors.ModelError` that names the file and what is wrong with it: missing, not a
regular file, unreadable, not GGUF, unsupported version, absurd header counts, unparsable metadata, no
``general.architecture``, no tensors, tensor infos llama.cpp's loader would reject (unknown type, rows
that are not whole quantization blocks, offsets out of sequence), or truncated (tensor data past the end
of the file). Metadata arrays (the vocabulary) are stepped over, not decoded: Gemma 3's 262k-token
vocabulary takes GGUFReader ~20 s and >1 GB to materialize, and ~0.1 s to skip.

On success it returns a :class:`GGUFInfo` summary (architecture, parameter count, quantization,
context length, chat template, scalar metadata) for the registry and ``llmhost show``.
"""

from __future__ import annotations

import dataclasses
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

from llmhost.errors import ModelError

log = logging.getLogger(__name__)

__all__ = ["GGUFInfo", "inspect_gguf", "inspect_gguf_cached"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = frozenset({2, 3})
HEADER_SIZE = 24  # magic (4) + version (4) + tensor count (8) + metadata KV count (8)
MAX_TENSOR_COUNT = 1_000_000
MAX_KV_COUNT = 100_000

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


class _Truncated(Exception):
    """Raised inside the reader when a read would go past the end of the file."""

    def __init__(self, needed: int, have: int) -> None:
        super().__init__(f"truncated: expected at least {needed} bytes, file has {have}")
        self.needed = needed
        self.have = have


class _CheckedReader(gguf.GGUFReader):
    """``GGUFReader`` whose every read is bounds-checked, so truncation is reported as such."""

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

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> _FieldParts:
        # GGUFReader builds numpy arrays for every element of every array (262k tokens, scores and types
        # for Gemma: ~20 s and >1 GB). We never use array values, so step over arrays of scalars and
        # strings without materializing them: their fields keep only the (type, length) header parts.
        try:
            gguf.GGUFValueType(int(raw_type))
        except ValueError:
            raise ValueError(f"unknown metadata value type {int(raw_type)}") from None
        if int(raw_type) != gguf.GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        try:
            itype = gguf.GGUFValueType(int(raw_itype[0]))
        except ValueError:
            raise ValueError(f"unknown metadata array element type {int(raw_itype[0])}") from None
        count = int(alen[0])
        offs = orig_offs + 12
        size = int(self.data.nbytes)
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is not None:
            offs += int(np.dtype(nptype).itemsize) * count
            if offs > size:
                raise _Truncated(offs, size)
        elif itype == gguf.GGUFValueType.STRING:
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
        else:  # arrays of arrays: rare, and small in practice
            return super()._get_field_parts(orig_offs, raw_type)
        return offs - orig_offs, [raw_itype, alen], [], [gguf.GGUFValueType.ARRAY, itype]

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        # The checks llama.cpp's gguf loader makes, plus the size the whole file should have, before the
        # reader maps anything: known types, whole blocks per row, tensors packed in order at aligned
        # offsets, and all data inside the file.
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
            if shape and shape[0] % block_size:
                raise ValueError(
                    f"tensor '{name}' rows of {shape[0]} elements are not whole {qtype.name} blocks"
                )
            n_elems = 1
            for dim in shape:
                n_elems *= dim
            offset = int(offset_tensor[0])
            if offset != expected_offset:
                raise ValueError(f"tensor '{name}' has data offset {offset}, expected {expected_offset}")
            n_bytes = n_elems * type_size // block_size
            expected_offset += -(-n_bytes // alignment) * alignment
            needed = max(needed, int(start_offs) + offset + n_bytes)
        if needed > size:
            raise _Truncated(needed, size)
        super()._build_tensors(start_offs, fields)


def _fail(path: Path, problem: str) -> ModelError:
    return ModelError(f"invalid model file {path}: {problem}")


def _read_header(path: Path) -> tuple[int, int, int, int]:
    """Cheap pre-parse checks; returns (file size, version, tensor count, KV count)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except OSError as exc:
        raise _fail(path, f"cannot stat file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not a GGUF file")
    if not stat.S_ISREG(st.st_mode):
        raise _fail(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_SIZE)
    except OSError as exc:
        raise _fail(path, f"cannot read file ({exc.strerror or exc})") from exc
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


def inspect_gguf(path: Path | str) -> GGUFInfo:
    """Validate the GGUF file at ``path`` and summarize it; raises ModelError if it is not usable."""
    path = Path(path)
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
    except OSError as exc:
        raise _fail(path, f"cannot read file ({getattr(exc, 'strerror', None) or exc})") from exc
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
        return GGUFInfo(
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
    except ModelError:
        raise
    except Exception as exc:
        raise _fail(path, f"unreadable metadata ({type(exc).__name__}: {exc})") from None


_INFO_CACHE_VERSION = 1


def inspect_gguf_cached(path: Path | str, digest: str, cache_dir: Path) -> GGUFInfo:
    """:func:`inspect_gguf`, remembered per content digest in ``cache_dir``.

    Store blobs never change (their name is their SHA-256), so a summary read once stays true; reading
    it again costs ~0.3 s on a 262k-token vocabulary, a fifth of a model load. A missing, unreadable or
    mismatched cache entry (e.g. the file's size changed under us) is simply recomputed.
    """
    path = Path(path)
    entry = cache_dir / f"{digest.replace(':', '-')}.json"
    try:
        raw = json.loads(entry.read_text())
        if raw.pop("cache_version") != _INFO_CACHE_VERSION or raw["size_bytes"] != path.stat().st_size:
            raise ValueError("stale")
        metadata = raw.pop("metadata")
        return GGUFInfo(path=path, metadata=MappingProxyType(metadata), **raw)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    info = inspect_gguf(path)
    record: dict[str, Any] = {
        f.name: getattr(info, f.name) for f in dataclasses.fields(info) if f.name not in {"path", "metadata"}
    }
    record.update(cache_version=_INFO_CACHE_VERSION, metadata=dict(info.metadata))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, entry)
    except OSError as exc:  # a read-only data dir only costs the speed-up
        log.debug("could not cache GGUF info in %s: %s", cache_dir, exc)
    return info
