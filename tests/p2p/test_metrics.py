"""The gateway's metrics registry: DHT hooks, bounded labels, outcomes from codes — plain calls."""

from __future__ import annotations

from p2p.errors import ErrorCode, RecordRefusal
from p2p.metrics import (
    OUTCOMES,
    REFUSAL_REASONS,
    Metrics,
    Outcome,
    count_refused_record,
    observe_dht_lookup,
)


def sample_value(text: str, name: str, labels: str = "") -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def refused(m: Metrics, reason: str) -> float:
    text = m.render().decode()
    return sample_value(text, "gpunet_dht_records_refused_total", f'reason="{reason}"')


def test_dht_hooks_feed_a_metrics_registry() -> None:
    m = Metrics()
    observe_dht_lookup(0.004, m)
    count_refused_record(RecordRefusal.BAD_SIGNATURE, m)
    count_refused_record(RecordRefusal.BAD_SIGNATURE, m)
    count_refused_record(RecordRefusal.STALE, m)
    assert sample_value(m.render().decode(), "gpunet_dht_lookup_seconds_count") == 1
    assert refused(m, "bad_signature") == 2
    assert refused(m, "stale") == 1


def test_refusal_labels_are_the_enum_values() -> None:
    assert tuple(r.value for r in RecordRefusal) == REFUSAL_REASONS
    m = Metrics()
    for r in RecordRefusal:
        count_refused_record(r, m)
    assert all(refused(m, r.value) == 1 for r in RecordRefusal)


def test_model_labels_are_bounded() -> None:
    m = Metrics()
    for i in range(200):
        m.count_request(f"model-{i}", Outcome.OK)
    labels = {line.split('"')[1] for line in m.render().decode().splitlines() if "model=" in line}
    assert "other" in labels and len(labels) <= 65


def test_every_code_has_an_outcome_and_the_labels_stay_as_they_were() -> None:
    assert OUTCOMES == (
        "ok",
        "cancelled",
        "bad_request",
        "unauthorized",
        "unknown_model",
        "busy",
        "too_long",
        "error",
    )
    assert {c: Outcome.of(c) for c in ErrorCode} == {
        ErrorCode.UNKNOWN_MODEL: Outcome.UNKNOWN_MODEL,
        ErrorCode.BUSY: Outcome.BUSY,
        ErrorCode.RATE_LIMITED: Outcome.BUSY,
        ErrorCode.SHUTTING_DOWN: Outcome.BUSY,
        ErrorCode.UNAVAILABLE: Outcome.BUSY,
        ErrorCode.BAD_REQUEST: Outcome.BAD_REQUEST,
        ErrorCode.TOO_LONG: Outcome.TOO_LONG,
        ErrorCode.TIMEOUT: Outcome.ERROR,
        ErrorCode.INTERNAL: Outcome.ERROR,
        ErrorCode.RELAY_FULL: Outcome.BUSY,
        ErrorCode.NO_RESERVATION: Outcome.ERROR,
        ErrorCode.PAUSED: Outcome.BUSY,
        ErrorCode.FORBIDDEN: Outcome.UNAUTHORIZED,
    }


def test_a_request_counts_under_its_outcome() -> None:
    m = Metrics()
    m.count_request("tiny", Outcome.of(ErrorCode.SHUTTING_DOWN))
    m.count_request("-", Outcome.UNAUTHORIZED)
    text = m.render().decode()
    series = "gpunet_gateway_requests_total"
    assert sample_value(text, series, 'model="tiny",outcome="busy"') == 1
    assert sample_value(text, series, 'model="-",outcome="unauthorized"') == 1
