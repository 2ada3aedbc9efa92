"""What a GGUF file is, read from its header without loading the weights.

A node announces the models it serves (name, architecture, quantization, sha256) before any
weights are loaded, and a volunteer may point us at any file; so the header is checked with a
bounded parse first, then the metadata is read through `gguf.GGUFReader`, which memory-maps the
file and never copies tensor data.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import gguf

GGUF_MAGIC = b"GGUF"
# gguf-py reads versions 2 and 3; version 1 predates the 64-bit counts and is long gone.
_SUPPORTED_VERSIONS = (2, 3)
# Far above any real model (Llama 3 405B has ~1,100 tensors and ~40 metadata keys), low enough
# that a hostile header cannot make the reader loop over billions of entries.
MAX_TENSOR_COUNT = 1_000_000
MAX_KV_COUNT = 1_000_000
_HASH_BLOCK = 1 << 20

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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so a multi-GB model never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


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


def _check_header(path: Path) -> int:
    """Check magic, version and counts; return the file size."""
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
    return size


def _field(reader: gguf.GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _quantization(reader: gguf.GGUFReader) -> str:
    file_type = _field(reader, "general.file_type")
    if isinstance(file_type, int):
        if file_type in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[file_type]
        try:
            return gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No (known) file_type: name the tensor type holding most of the weights.
    by_elements: Counter[str] = Counter()
    for tensor in reader.tensors:
        by_elements[tensor.tensor_type.name] += int(tensor.n_elements)
    return by_elements.most_common(1)[0][0] if by_elements else "unknown"


def inspect_gguf(path: Path, *, sha256: str | None = None) -> ModelInfo:
    """Read a GGUF's metadata without loading weights.

    `sha256` is trusted when given (the caller already hashed or verified the file, which takes
    seconds for a large model); otherwise it is computed here.
    """
    path = Path(path)
    size = _check_header(path)
    try:
        reader = gguf.GGUFReader(path)
        architecture = _field(reader, "general.architecture")
        if not isinstance(architecture, str):
            raise _not_gguf(path, "no general.architecture")
        context_length = _field(reader, f"{architecture}.context_length")
        layer_count = _field(reader, f"{architecture}.block_count")
        quantization = _quantization(reader)
        parameter_count = sum(int(t.n_elements) for t in reader.tensors)
        has_chat_template = reader.get_field("tokenizer.chat_template") is not None
        del reader  # closes the memory map
    except ModelFileError:
        raise
    except Exception as e:
        # gguf-py signals a truncated or corrupt file with whatever numpy raised on the way
        # (ValueError, IndexError, KeyError, UnicodeDecodeError, ...); all mean the same here.
        raise _not_gguf(path, f"truncated or corrupt: {type(e).__name__}: {e}") from e
    if sha256 is None:
        try:
            sha256 = sha256_file(path)
        except OSError as e:
            raise _not_gguf(path, f"unreadable: {e.strerror or e}") from e
    return ModelInfo(
        path=str(path),
        sha256=sha256.lower(),
        name=model_name_from(path),
        architecture=architecture,
        parameter_count=parameter_count,
        quantization=quantization,
        context_length=int(context_length) if isinstance(context_length, int) else 0,
        layer_count=int(layer_count) if isinstance(layer_count, int) else 0,
        file_size=size,
        has_chat_template=has_chat_template,
    )
