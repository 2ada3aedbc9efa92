"""The node's served work on its `/metrics`: a Prometheus collector over `NodeStats`.

`gpunet node --api` serves the gateway's metrics (p2p/metrics.py); the CLI (p2p/cli/node.py)
registers this collector in the same registry, so the page also counts what the node does for
others — requests by outcome, tokens, its own time to first token, refusals by code, queue and
slots, bytes of model files shared. The node never imports the API: the collector only reads the
stats object the CLI hands to both. Read at scrape time, so the figures are never stale and cost
nothing between scrapes; every label value comes from a bounded set (outcomes and codes are
enums, models the names the node serves).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from p2p.node.node_stats import NodeStats

_GAUGES = {
    "active_requests": "Requests the node is serving now.",
    "slots": "Sequences the node's models decode together, all models.",
    "slots_in_use": "Slots generating now.",
    "queue_depth": "Requests accepted and waiting for a slot.",
    "paused": "1 while the node is paused (`gpunet pause` or outside --serve-hours).",
}


class NodeWorkCollector(Collector):
    """`gpunet_node_*` series read from *stats* at each scrape."""

    def __init__(self, stats: NodeStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s = self.stats
        requests = CounterMetricFamily(
            "gpunet_node_requests",
            "Requests this node served for others, by outcome (ok, cancelled, or the error code).",
            labels=["outcome"],
        )
        for outcome, count in s.outcomes.items():
            requests.add_metric([outcome], count)
        yield requests
        refusals = CounterMetricFamily(
            "gpunet_node_refusals",
            "Requests refused before they started, by code (busy, rate_limited, paused, ...).",
            labels=["code"],
        )
        for code, count in s.refusals.items():
            refusals.add_metric([code], count)
        yield refusals
        tokens = CounterMetricFamily(
            "gpunet_node_tokens_generated",
            "Completion tokens this node generated for others, by model.",
            labels=["model"],
        )
        for model, work in s.by_model.items():
            tokens.add_metric([model], work.tokens)
        yield tokens
        yield CounterMetricFamily(
            "gpunet_node_prompt_tokens", "Prompt tokens of requests served.", value=s.prompt_tokens
        )
        yield HistogramMetricFamily(
            "gpunet_node_time_to_first_token_seconds",
            "On the node: from a request's start to its first token (the node's own prefill).",
            buckets=s.ttft_cumulative(),
            sum_value=s.ttft_sum,
        )
        live = s.live()
        for key, text in _GAUGES.items():
            if key in live:
                yield GaugeMetricFamily(f"gpunet_node_{key}", text, value=live[key])
        for key, text in (("shared_bytes", "Bytes"), ("shared_chunks", "Chunks")):
            if key in live:
                yield CounterMetricFamily(
                    f"gpunet_node_{key}", f"{text} of model files sent to peers.", value=live[key]
                )
        yield GaugeMetricFamily(
            "gpunet_node_uptime_seconds", "Seconds since the node started.", value=s.uptime_s()
        )
