"""The node's served-work counters (pure) and their `/metrics` series beside the gateway's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from p2p.errors import ErrorCode
from p2p.metrics import Metrics, Outcome
from p2p.node.node_metrics import NodeWorkCollector
from p2p.node.node_stats import RECENT_TTFT, NodeStats
from p2p.protocol import wire


def done(tokens: int, ttft: float) -> wire.Done:
    return wire.Done(0, "length", 5, tokens, ttft, 10.0)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_outcomes_tokens_refusals_and_ttft() -> None:
    now = [100.0]
    stats = NodeStats(clock=lambda: now[0])
    stats.finished(done(8, 0.2), 1.0, "tiny")
    stats.finished(done(4, 0.4), 0.5, "tiny")
    stats.finished(wire.Error(0, ErrorCode.TOO_LONG, "long"), 0.1, "tiny")
    stats.finished(None, 0.3, None)  # cancelled, of a model not served here
    stats.finished(wire.Scores(0, 3, (), (), (), (), (), (), (), 0.1), 0.2, "tiny")
    stats.refused(ErrorCode.BUSY)
    stats.refused(ErrorCode.PAUSED)
    stats.refused(ErrorCode.PAUSED)
    now[0] = 160.0
    summary = stats.summary()
    assert summary["requests"] == 5
    assert summary["outcomes"] == {"ok": 3, "cancelled": 1, "too_long": 1}
    assert summary["refusals"] == {"busy": 1, "paused": 2}
    assert summary["tokens_generated"] == 12 and summary["prompt_tokens"] == 10
    assert summary["ttft_s"] == {"samples": 2, "median": 0.2, "p90": 0.4}
    assert summary["uptime_s"] == 60.0
    assert stats.by_model["tiny"].requests == 4 and stats.by_model["-"].requests == 1


def test_memory_is_bounded_by_what_the_node_serves() -> None:
    stats = NodeStats()
    for i in range(RECENT_TTFT * 3):
        stats.finished(done(1, i / 1000), 0.01, "tiny")
    assert len(stats.ttft_recent) == RECENT_TTFT
    assert sum(stats.ttft_counts) == RECENT_TTFT * 3
    assert set(stats.by_model) == {"tiny"}
    assert set(stats.outcomes) >= {"ok", "cancelled", "paused"}


def test_metrics_page_counts_the_work_served_beside_the_gateways() -> None:
    metrics = Metrics()
    stats = NodeStats()
    stats.live = lambda: {"queue_depth": 3.0, "slots_in_use": 2.0, "paused": 1.0,
                          "shared_bytes": 4096.0, "shared_chunks": 1.0}  # fmt: skip
    metrics.registry.register(NodeWorkCollector(stats))
    metrics.count_request("tiny", Outcome.OK)
    stats.finished(done(7, 0.03), 0.2, "tiny")
    stats.finished(wire.Error(0, ErrorCode.INTERNAL, "x"), 0.2, "tiny")
    stats.refused(ErrorCode.RATE_LIMITED)
    got = samples(metrics.render().decode())
    assert got[("gpunet_gateway_requests_total", (("model", "tiny"), ("outcome", "ok")))] == 1
    assert got[("gpunet_node_requests_total", (("outcome", "ok"),))] == 1
    assert got[("gpunet_node_requests_total", (("outcome", "internal"),))] == 1
    assert got[("gpunet_node_refusals_total", (("code", "rate_limited"),))] == 1
    assert got[("gpunet_node_tokens_generated_total", (("model", "tiny"),))] == 7
    assert got[("gpunet_node_time_to_first_token_seconds_bucket", (("le", "0.025"),))] == 0
    assert got[("gpunet_node_time_to_first_token_seconds_bucket", (("le", "0.05"),))] == 1
    assert got[("gpunet_node_time_to_first_token_seconds_count", ())] == 1
    assert got[("gpunet_node_queue_depth", ())] == 3
    assert got[("gpunet_node_paused", ())] == 1
    assert got[("gpunet_node_shared_bytes_total", ())] == 4096
