"""The capability record as a pure function: plain values in, a record out (no model, no GPU)."""

from __future__ import annotations

from crypto.identity import Identity
from inference.gpu import GpuInfo, HostFacts
from inference.model_file import ModelInfo
from p2p.dht.records import open_record, sign_record
from p2p.node.capability import ModelOffer, capability_record, load_entry
from p2p.node.record_seq import RecordSequence

INFO = ModelInfo(
    path="/m.gguf",
    sha256="ab" * 32,
    name="tiny",
    architecture="llama",
    parameter_count=1000,
    quantization="Q4_0",
    context_length=512,
    layer_count=2,
    file_size=1,
    has_chat_template=False,
)
HOST = HostFacts(
    cores=8, ram_bytes=2**34, cpu_flags=("AVX2",), gpu_offload=True, build="b1", machine="x86_64"
)
GPU = GpuInfo(0, "NVIDIA H200" + "x" * 300, 2**37, 2**36, "9.0", "550", "12.4", 3)


def record(**overrides: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "addresses": ("127.0.0.1:1",),
        "seq": 7,
        "now": 1000.0,
        "ttl_s": 300.0,
        "models": (ModelOffer(INFO, n_gpu_layers=99, prefill_tok_s=123.45, decode_tok_s=9.87),),
        "gpus": (GPU,),
        "host": HOST,
        "load": load_entry(1, 4, draining=False),
        "network_id": None,
    }
    args.update(overrides)
    return capability_record(IDENTITY, **args)  # type: ignore[arg-type]


IDENTITY = Identity.generate()


def test_the_record_is_a_function_of_its_inputs() -> None:
    first = record()
    assert first == record()
    assert first.seq == 7 and first.issued_at == 1000.0 and first.expires_at == 1300.0
    assert first.peer_id == IDENTITY.peer_id and first.addresses == ("127.0.0.1:1",)
    [model] = first.models
    assert model.layers_offloaded == 2  # at most the model's layers
    assert (model.prefill_tok_s, model.decode_tok_s) == (123.5, 9.9)
    assert len(first.gpus[0].name) == 200
    assert "H200" in first.hardware_class
    assert first.load.free_slots == 3
    signed = sign_record(first, IDENTITY)
    assert open_record(signed.blob, now=1001.0).record == first


def test_a_draining_node_announces_no_free_slot() -> None:
    assert load_entry(1, 4, draining=True).free_slots == 0
    assert load_entry(9, 4, draining=False).free_slots == 0


def test_without_offloaded_layers_the_hardware_class_is_the_cpu() -> None:
    cpu_only = record(models=(ModelOffer(INFO, n_gpu_layers=0),))
    assert "H200" not in cpu_only.hardware_class


def test_the_sequence_number_only_goes_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    seq = RecordSequence(tmp_path)
    first = seq.next(now=2000.0)
    assert seq.next(now=1000.0) == first + 1  # a clock set back
    assert RecordSequence(tmp_path).next(now=1000.0) == first + 2  # a restart


def test_the_model_entry_tells_the_context_the_node_runs() -> None:
    """Not the GGUF's trained context (INFO says 512): the one requests get here."""
    runs = record(models=(ModelOffer(INFO, n_gpu_layers=0, n_ctx=256),))
    assert [m.context_length for m in runs.models] == [256]
    unknown = record(models=(ModelOffer(INFO, n_gpu_layers=0),))
    assert [m.context_length for m in unknown.models] == [512]
