from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from inference.default_model import DEFAULT_MODEL_SHA256
from inference.model_file import ModelFileError, inspect_gguf, model_name_from, verify_sha256


def test_inspect_tiny_model(tiny_gguf: Path) -> None:
    info = inspect_gguf(tiny_gguf)
    assert info.architecture == "llama"
    assert info.layer_count == 2
    assert info.context_length == 512
    assert info.quantization == "F32"
    assert info.name == "tiny-llama"
    assert info.sha256 == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert info.file_size == tiny_gguf.stat().st_size
    assert 1_000_000 < info.parameter_count < 2_000_000
    assert not info.has_chat_template


def test_given_sha256_is_trusted_not_recomputed(tiny_gguf: Path) -> None:
    assert inspect_gguf(tiny_gguf, sha256="AB" * 32).sha256 == "ab" * 32


@pytest.mark.slow
def test_inspect_default_model(default_model: Path) -> None:
    info = inspect_gguf(default_model)
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.sha256 == DEFAULT_MODEL_SHA256
    assert info.name == "gemma-3-270m-q4_k_m"
    assert info.layer_count == 18
    assert not info.has_chat_template
    assert 250_000_000 < info.parameter_count < 300_000_000


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "only 0 bytes"),
        (b"not a model at all, just some text here", "bad magic"),
        (b"GGUF" + (9).to_bytes(4, "little") + bytes(16), "unsupported version 9"),
        (b"GGUF" + (3).to_bytes(4, "little") + (2**40).to_bytes(8, "little") + bytes(8),
         "implausible header"),
    ],
)  # fmt: skip
def test_non_gguf_files_are_rejected(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=f"is not a GGUF model file \\({why}"):
        inspect_gguf(path)


def test_truncated_missing_and_directory(tmp_path: Path, tiny_gguf: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:3_000_000])
    with pytest.raises(ModelFileError, match=r"not a GGUF model file \(truncated\)"):
        inspect_gguf(truncated)
    with pytest.raises(ModelFileError, match="no such file"):
        inspect_gguf(tmp_path / "missing.gguf")
    with pytest.raises(ModelFileError, match="not a regular file"):
        inspect_gguf(tmp_path)


def test_verify_sha256(tiny_gguf: Path) -> None:
    verify_sha256(tiny_gguf, hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())
    with pytest.raises(ModelFileError, match="expected 0000"):
        verify_sha256(tiny_gguf, "0" * 64)


def test_display_names() -> None:
    assert model_name_from(Path("/m/Gemma-3-270M-Q4_K_M.gguf")) == "gemma-3-270m-q4_k_m"
    assert model_name_from(Path("My Model (v2).gguf")) == "my-model-v2"


def test_header_parse_agrees_with_gguf_reader(
    tmp_path: Path, make_tiny_gguf: Callable[..., Path]
) -> None:
    import gguf

    path = make_tiny_gguf(tmp_path / "q.gguf", seed=3, quantize="Q4_0")
    reader = gguf.GGUFReader(path)
    info = inspect_gguf(path)
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    block_count = reader.get_field("llama.block_count")
    assert block_count is not None and info.layer_count == block_count.contents()
    assert info.quantization == "Q4_0"


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    import gguf
    import numpy as np

    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")  # no general.file_type
    q8 = gguf.GGMLQuantizationType.Q8_0
    weight = np.zeros((4, 256), dtype=np.float32)
    writer.add_tensor("w", gguf.quants.quantize(weight, q8), raw_dtype=q8)
    writer.add_tensor("norm", np.ones(256, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = inspect_gguf(path)
    assert (info.quantization, info.parameter_count, info.layer_count) == ("Q8_0", 1280, 0)
