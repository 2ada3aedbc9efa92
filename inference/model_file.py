"""What a GGUF file is, read from its header without loading the weights.

A node announces the models it serves (name, architecture, quantization, sha256) before any
weights are loaded, and a volunteer may point us at any file. The header is parsed here over a
read-only memory map, with every length checked against the file size. `gguf.GGUFReader` would
do, but it materialises every element of every array: 12.5 s for Gemma 3's 262,144-token
vocabulary, against ~0.1 s here, where arrays are skipped (string arrays by walking lengths).
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import gguf

from inference.sha256_cache import Progress, Sha256Cache, default_sha256_cache
from inference.sha256_cache import sha256_file as sha256_file  # its old home: re-exported

GGUF_MAGIC = b"GGUF"
# gguf-py reads versions 2 and 3; version 1 predates the 64-bit counts and is long gone.
_SUPPORTED_VERSIONS = (2, 3)
# Far above any real model (Llama 3 405B has ~1,100 tensors and ~40 metadata keys), low enough
# that a hostile header cannot make the reader loop over billions of entries.
MAX_TENSOR_COUNT = 1_000_000
MAX_KV_COUNT = 1_000_000

# llama.cpp's LLAMA_FTYPE ids (general.file_type) -> the names people use for them.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip


class ModelFileError(Exception):
    """A model file is missing, unreadable, not a GGUF, or not the file we expected.

    The message is one line meant for the user, naming the path.
    """


@attrs.frozen
class ModelLayout:
    """Sizes that decide how much of a model fits in GPU memory (inference/offload.py).

    Read from the tensor table and the architecture's metadata keys; a key the file lacks is 0
    (head_count_kv then defaults to head_count, key/value lengths to embedding / heads).
    """

    layer_bytes: tuple[int, ...]  # bytes of each repeating block's tensors (blk.N.*), in order
    input_bytes: int  # token embeddings and anything else llama.cpp keeps on the CPU
    output_bytes: int  # output head (+ final norm); a tied head repeats the token embeddings
    n_embd: int
    n_head: int
    n_head_kv: int
    key_length: int  # per head
    value_length: int  # per head
    n_vocab: int

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        """KV cache bytes one token costs in one layer, at llama.cpp's default F16 cache."""
        return (self.key_length + self.value_length) * self.n_head_kv * 2


@attrs.frozen
class ModelInfo:
    """What the network needs to know about a model file.

    `name` is the file stem, lowercased, with anything outside [a-z0-9._-] turned into "-"
    (gemma-3-270m-q4_k_m.gguf -> "gemma-3-270m-q4_k_m"). It is preferred to `general.name`
    because it is what users see and type, and it does not change when a converter rewrites the
    metadata; two quantizations of one model also get different names this way.
    """

    path: str
    sha256: str
    name: str
    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    layer_count: int
    file_size: int
    has_chat_template: bool
    # The GGUF's own Jinja chat template, kept for rendering chat requests; never published.
    chat_template: str | None = attrs.field(default=None, repr=False)
    # Tensor sizes for offload planning; None only for a ModelInfo built by hand.
    layout: ModelLayout | None = attrs.field(default=None, repr=False)
    # llama.cpp's LLAMA_POOLING_TYPE_* from `<arch>.pooling_type` (1 mean, 2 cls, 3 last): set
    # only in an embedding model's file, which a node serves on /v1/embeddings (None: not one).
    pooling_type: int | None = None


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ModelFileError unless the file's sha256 is `expected`."""
    try:
        actual = sha256_file(path)
    except OSError as e:
        raise ModelFileError(f"{path} is unreadable ({e.strerror or e})") from e
    if actual != expected.lower():
        raise ModelFileError(f"{path} has sha256 {actual}, expected {expected.lower()}")


def model_name_from(path: Path) -> str:
    """The display name of a model file: see ModelInfo."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(path).stem.lower()).strip("-.")
    return name or "model"


def _not_gguf(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a GGUF model file ({why})")


def check_header(path: Path) -> tuple[int, int, int]:
    """Check magic, version and counts; return (file size, tensor count, key count)."""
    try:
        if not path.exists():
            raise _not_gguf(path, "no such file")
        if not path.is_file():
            raise _not_gguf(path, "not a regular file")
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            header = f.read(24)
    except OSError as e:
        raise _not_gguf(path, f"unreadable: {e.strerror or e}") from e
    if len(header) < 24:
        raise _not_gguf(path, f"only {len(header)} bytes")
    if header[:4] != GGUF_MAGIC:
        raise _not_gguf(path, "bad magic")
    version, n_tensors, n_kv = struct.unpack("<IQQ", header[4:24])
    if version not in _SUPPORTED_VERSIONS:
        raise _not_gguf(path, f"unsupported version {version}")
    if n_tensors > MAX_TENSOR_COUNT or n_kv > MAX_KV_COUNT:
        raise _not_gguf(path, f"implausible header: {n_tensors} tensors, {n_kv} keys")
    return size, n_tensors, n_kv


# GGUF value types (gguf.GGUFValueType) -> struct format of a scalar; 8 STRING, 9 ARRAY.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32


class _Truncated(Exception):
    pass


class _Cursor:
    """Reads little-endian GGUF values from a buffer, never past its end."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated
        self.pos += n

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        start = self.pos
        self.skip(size)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start : start + n]).decode("utf-8", "replace")

    def value(self, value_type: int) -> Any:
        """A scalar or string; arrays are skipped and read as None."""
        if value_type in _SCALARS:
            return self.scalar(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        if value_type != _ARRAY:
            raise ValueError(f"unknown value type {value_type}")
        item_type, count = self.scalar("<I"), self.scalar("<Q")
        if item_type in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[item_type]))
        elif item_type == _STRING:
            if count * 8 > len(self.buf) - self.pos:
                raise _Truncated
            for _ in range(count):
                self.skip(self.scalar("<Q"))
        else:  # llama.cpp rejects nested arrays too; walking them would invite deep recursion
            raise ValueError(f"array of value type {item_type}")
        return None


@attrs.frozen
class _Header:
    metadata: dict[str, Any]  # arrays present with value None
    array_lengths: dict[str, int]  # the length of every array-valued key
    tensor_names: list[str]
    tensor_types: list[int]
    tensor_elements: list[int]
    tensor_bytes: list[int]  # 0 for a type newer than gguf-py knows


def _block_size(ggml_type: int) -> tuple[int, int]:
    """(elements per block, bytes per block); (0, 0) for a type newer than gguf-py knows."""
    try:
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return (0, 0)


def _parse(buf: mmap.mmap, n_tensors: int, n_kv: int) -> _Header:
    cur = _Cursor(buf)
    cur.skip(24)  # magic, version, counts: checked by check_header
    metadata, array_lengths = {}, {}
    for _ in range(n_kv):
        key = cur.string()
        value_type = cur.scalar("<I")
        if value_type == _ARRAY:  # peek at the count; value() then skips the items
            array_lengths[key] = struct.unpack_from("<Q", cur.buf, cur.pos + 4)[0]
        metadata[key] = cur.value(value_type)
    names, types, elements, sizes, ends = [], [], [], [], []
    for _ in range(n_tensors):
        names.append(cur.string())
        n_dims = cur.scalar("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ValueError(f"tensor with {n_dims} dimensions")
        count = math.prod(cur.scalar("<Q") for _ in range(n_dims))
        ggml_type, offset = cur.scalar("<I"), cur.scalar("<Q")
        types.append(ggml_type)
        elements.append(count)
        block, type_size = _block_size(ggml_type)
        sizes.append(count // block * type_size if block else 0)
        ends.append(offset + sizes[-1])
    alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"bad general.alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    if max(ends, default=0) + data_start > len(buf):
        raise _Truncated
    return _Header(metadata, array_lengths, names, types, elements, sizes)


def _type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type{ggml_type}"


def _quantization(header: _Header) -> str:
    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        if file_type in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[file_type]
        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No (known) file_type: name the tensor type holding most of the weights.
    by_elements: Counter[str] = Counter()
    for ggml_type, count in zip(header.tensor_types, header.tensor_elements, strict=True):
        by_elements[_type_name(ggml_type)] += count
    return by_elements.most_common(1)[0][0] if by_elements else "unknown"


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.")
# Tensors llama.cpp places with the output layer (offloaded only when n_gpu_layers > blocks).
_OUTPUT_TENSORS = ("output.", "output_norm.")


def _layout(header: _Header, architecture: str, layer_count: int) -> ModelLayout:
    meta = header.metadata

    def key(name: str) -> int:
        return _int(meta.get(f"{architecture}.{name}"))

    layers = [0] * layer_count
    input_bytes = output_bytes = embedding_bytes = 0
    has_output = False
    for name, size in zip(header.tensor_names, header.tensor_bytes, strict=True):
        if (m := _LAYER_TENSOR.match(name)) is not None:
            index = int(m.group(1))
            if index < layer_count:
                layers[index] += size
            else:  # e.g. a multi-token-prediction block beyond block_count: never offloaded
                input_bytes += size
        elif name.startswith(_OUTPUT_TENSORS):
            output_bytes += size
            has_output = has_output or name.startswith("output.")
        else:
            input_bytes += size
            if name.startswith("token_embd."):
                embedding_bytes = size
    if not has_output:  # tied embeddings: llama.cpp puts a copy of token_embd on the GPU
        output_bytes += embedding_bytes
    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    head_dim = n_embd // n_head if n_head else 0
    n_vocab = key("vocab_size") or header.array_lengths.get("tokenizer.ggml.tokens", 0)
    return ModelLayout(
        layer_bytes=tuple(layers),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        n_embd=n_embd,
        n_head=n_head,
        # Per-layer arrays (some hybrid models) read as 0 here: take the widest case, n_head.
        n_head_kv=key("attention.head_count_kv") or n_head,
        key_length=key("attention.key_length") or head_dim,
        value_length=key("attention.value_length") or head_dim,
        n_vocab=n_vocab,
    )


def inspect_gguf(
    path: Path,
    *,
    sha256: str | None = None,
    hash_cache: Sha256Cache | None = None,
    progress: Progress | None = None,
) -> ModelInfo:
    """Read a GGUF's metadata without loading weights.

    `sha256` is trusted when given (the caller already hashed or verified the file, which takes
    seconds for a large model). Otherwise it comes from `hash_cache` (default: the user's cache
    beside the default model, see inference/sha256_cache.py), which hashes the file only when
    its size or mtime changed since it last did; `progress(done, total)` reports that hashing.
    """
    path = Path(path)
    size, n_tensors, n_kv = check_header(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            header = _parse(buf, n_tensors, n_kv)
    except _Truncated:
        raise _not_gguf(path, "truncated") from None
    except OSError as e:
        raise _not_gguf(path, f"unreadable: {e.strerror or e}") from e
    except (ValueError, OverflowError) as e:
        raise _not_gguf(path, f"corrupt: {e}") from e
    metadata = header.metadata
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str) or not architecture:
        raise _not_gguf(path, "no general.architecture")
    if sha256 is None:
        try:
            cache = hash_cache if hash_cache is not None else default_sha256_cache()
            sha256 = cache.sha256(path, progress)
        except OSError as e:
            raise _not_gguf(path, f"unreadable: {e.strerror or e}") from e
    layer_count = _int(metadata.get(f"{architecture}.block_count"))
    return ModelInfo(
        path=str(path),
        sha256=sha256.lower(),
        name=model_name_from(path),
        architecture=architecture,
        parameter_count=sum(header.tensor_elements),
        quantization=_quantization(header),
        context_length=_int(metadata.get(f"{architecture}.context_length")),
        layer_count=layer_count,
        file_size=size,
        has_chat_template="tokenizer.chat_template" in metadata,
        chat_template=template
        if isinstance(template := metadata.get("tokenizer.chat_template"), str)
        else None,
        layout=_layout(header, architecture, layer_count),
        pooling_type=_int(pooling)
        if (pooling := metadata.get(f"{architecture}.pooling_type")) is not None
        else None,
    )
