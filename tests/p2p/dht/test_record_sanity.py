"""Attack 7 of issue #14, in-range lies: records whose fields each parse but do not make sense
together, or claim more than any machine has. Each is refused where the record is built from
the wire, as `RecordError` with `RecordRefusal.MALFORMED`; plain calls, no sockets.

Before issue #14 (commit daa14b5) every one of these was accepted by `open_record`.
"""

from __future__ import annotations

import time
from typing import Any

import msgpack
import pytest

from p2p.dht.record_bounds import (
    MAX_ACTIVE_REQUESTS,
    MAX_CONTEXT_TOKENS,
    MAX_CPU_CORES,
    MAX_DECODE_TOK_S,
    MAX_FREE_SLOTS,
    MAX_GPU_VRAM_BYTES,
    MAX_LAYERS,
    MAX_PARAMETERS,
    MAX_PREFILL_TOK_S,
    MAX_QUEUE_DEPTH,
    MAX_RAM_BYTES,
)
from p2p.dht.records import (
    ENVELOPE_VERSION,
    RECORD_DOMAIN,
    GpuEntry,
    RecordError,
    open_record,
    record_from_plain,
)
from p2p.errors import RecordRefusal
from tests.p2p.dht.test_records import IDENT, make_record, plain

GPU = GpuEntry("NVIDIA H100", 80 << 30, 40 << 30, "9.0", "550.54", "12.4", 37)


def honest() -> dict[str, Any]:
    import attrs

    return plain(attrs.evolve(make_record(IDENT), gpus=(GPU,)))


def signed_blob(body_plain: dict[str, Any]) -> bytes:
    """What a liar puts on the wire: its own body, validly signed (no local check first)."""
    body = msgpack.packb(body_plain, use_bin_type=True)
    signature = IDENT.sign(RECORD_DOMAIN, body)
    return msgpack.packb([ENVELOPE_VERSION, body, signature], use_bin_type=True)


def gpu(**change: object) -> dict[str, Any]:
    data = honest()
    data["gpus"] = [{**data["gpus"][0], **change}]
    return data


def model(**change: object) -> dict[str, Any]:
    data = honest()
    data["models"] = [{**data["models"][0], **change}]
    return data


def cpu(**change: object) -> dict[str, Any]:
    data = honest()
    data["cpu"] = {**data["cpu"], **change}
    return data


def load(**change: object) -> dict[str, Any]:
    data = honest()
    data["load"] = {**data["load"], **change}
    return data


# The lies first, then each bound just past its limit.
LIES = {
    "free VRAM above total": gpu(vram_total=8 << 30, vram_free=9 << 30),
    "utilisation 10^18 %": gpu(utilization_pct=10**18),
    "utilisation 101 %": gpu(utilization_pct=101),
    "999 of 18 layers offloaded": model(layers_offloaded=999, layers_total=18),
    "19 of 18 layers offloaded": model(layers_offloaded=19, layers_total=18),
    "context 2^62": model(context_length=2**62),
    "10^18 free slots": load(free_slots=10**18),
    "decode 10^12 tok/s": model(decode_tok_s=1e12 - 1),
    "vram over the bound": gpu(vram_total=MAX_GPU_VRAM_BYTES + 1, vram_free=0),
    "layers over the bound": model(layers_offloaded=0, layers_total=MAX_LAYERS + 1),
    "context over the bound": model(context_length=MAX_CONTEXT_TOKENS + 1),
    "parameters over the bound": model(parameter_count=MAX_PARAMETERS + 1),
    "decode over the bound": model(decode_tok_s=MAX_DECODE_TOK_S * 1.01),
    "prefill over the bound": model(prefill_tok_s=MAX_PREFILL_TOK_S * 1.01),
    "cores over the bound": cpu(cores=MAX_CPU_CORES + 1),
    "RAM over the bound": cpu(ram_bytes=MAX_RAM_BYTES + 1),
    "free slots over the bound": load(free_slots=MAX_FREE_SLOTS + 1),
    "active requests over the bound": load(active_requests=MAX_ACTIVE_REQUESTS + 1),
    "queue over the bound": load(queue_depth=MAX_QUEUE_DEPTH + 1),
}


def test_an_honest_record_at_every_bound_is_accepted() -> None:
    at_bounds = honest()
    at_bounds["gpus"][0].update(
        vram_total=MAX_GPU_VRAM_BYTES, vram_free=MAX_GPU_VRAM_BYTES, utilization_pct=100
    )
    at_bounds["models"][0].update(
        layers_offloaded=MAX_LAYERS,
        layers_total=MAX_LAYERS,
        context_length=MAX_CONTEXT_TOKENS,
        parameter_count=MAX_PARAMETERS,
        decode_tok_s=MAX_DECODE_TOK_S,
        prefill_tok_s=MAX_PREFILL_TOK_S,
    )
    at_bounds["cpu"].update(cores=MAX_CPU_CORES, ram_bytes=MAX_RAM_BYTES)
    at_bounds["load"].update(
        free_slots=MAX_FREE_SLOTS,
        active_requests=MAX_ACTIVE_REQUESTS,
        queue_depth=MAX_QUEUE_DEPTH,
    )
    opened = open_record(signed_blob(at_bounds), now=time.time()).record
    assert opened.gpus[0].vram_free == opened.gpus[0].vram_total
    assert open_record(signed_blob(honest()), now=time.time()).record.gpus == (GPU,)


@pytest.mark.parametrize("lie", list(LIES))
def test_a_signed_record_that_does_not_make_sense_is_refused_on_the_wire(lie: str) -> None:
    blob = signed_blob(LIES[lie])
    with pytest.raises(RecordError) as refused:
        open_record(blob, now=time.time())
    assert refused.value.refusal is RecordRefusal.MALFORMED
    with pytest.raises(RecordError):
        record_from_plain(LIES[lie])


def test_our_own_record_cannot_be_built_with_a_lie_either() -> None:
    """The rules live on the record classes, so a node never publishes what peers refuse."""
    with pytest.raises(RecordError):
        GpuEntry("x", 1, 2, "9.0", "1", "1", 0)
    with pytest.raises(RecordError):
        GpuEntry("x", 2, 1, "9.0", "1", "1", 101)
