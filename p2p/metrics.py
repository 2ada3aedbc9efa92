"""Prometheus metrics of a gateway (and hooks for the DHT), in a registry of our own.

Everything lives in a `Metrics` object that owns its `CollectorRegistry`: never the process-wide
default registry, so two gateways in one process (tests) or a library user's own metrics never
collide, and `/metrics` shows only gpunet's series.

`DEFAULT` is the instance the gateway serves when it is not given one, and the one the
module-level hooks below feed. The hooks are how code without a handle on the gateway (the DHT,
the record store) reports what it sees:

    from p2p import metrics
    metrics.observe_dht_lookup(seconds)            # after each find_records / collect
    metrics.count_refused_record(refusal)          # a p2p.errors.RecordRefusal
    metrics.track_routing_table_size(dht.routing_table_size)  # a callable, read at scrape time

Label values that come from the network or from users are bounded (models: at most
`MAX_MODEL_LABELS` names, then "other"; refusal reasons: `p2p.errors.RecordRefusal`; outcomes:
`Outcome`): every distinct label value is a time series kept forever, so an unbounded label is a
memory leak a stranger can drive. Outcomes and refusals are enums given by the code that knows
what happened (a request's `ErrorCode`, the record rule that refused); no label is ever read out
of a message's text, so rewording a message cannot move a count.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from p2p.errors import ErrorCode, RecordRefusal

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DEFAULT",
    "OUTCOMES",
    "REFUSAL_REASONS",
    "Metrics",
    "Outcome",
    "count_refused_record",
    "observe_dht_lookup",
    "set_routing_table_size",
    "track_routing_table_size",
]

# Distinct model names kept as label values; beyond this, requests count under "other".
MAX_MODEL_LABELS = 64
OTHER = "other"
# A model name that was not found (or a request refused before its model was known): never the
# caller's text, which could be anything.
NO_MODEL = "-"


class Outcome(enum.Enum):
    """How a gateway request ended: the `outcome` label of `gpunet_gateway_requests`."""

    OK = "ok"
    CANCELLED = "cancelled"  # the HTTP client went away before the end
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    UNKNOWN_MODEL = "unknown_model"
    BUSY = "busy"  # no provider had room (busy, rate limited, draining, none could serve)
    TOO_LONG = "too_long"
    ERROR = "error"

    @classmethod
    def of(cls, code: ErrorCode) -> Outcome:
        """The outcome of a request that ended in *code*."""
        return _OUTCOME_OF_CODE[code]


_OUTCOME_OF_CODE: dict[ErrorCode, Outcome] = {
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

OUTCOMES = tuple(o.value for o in Outcome)
REFUSAL_REASONS = tuple(r.value for r in RecordRefusal)

# Time to first token: prefill of a short prompt on a GPU is ~10 ms, a long prompt on a CPU
# several seconds; the network adds a DHT lookup and a Noise handshake (a few round trips).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Between text chunks: ~3 ms for a small model on a GPU, ~30 ms for 270M on 2 CPU cores,
# seconds when a node is overloaded.
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
# A DHT lookup is one to a few rounds of UDP RPCs; each RPC times out after 3 s.
LOOKUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 10.0)


class Metrics:
    """The gateway's series, in their own registry. Methods are safe to call from any thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gpunet_gateway_requests",
            "OpenAI API generation requests by model and outcome.",
            ["model", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "gpunet_gateway_tokens_generated",
            "Completion tokens generated for gateway requests (as counted by the serving node).",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "gpunet_gateway_time_to_first_token_seconds",
            "From the request reaching the gateway to the first text arriving from the network.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "gpunet_gateway_inter_token_latency_seconds",
            "Gap between consecutive text chunks from the network (a chunk is one token, or a "
            "few when a UTF-8 character or a possible stop string was held back).",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "gpunet_gateway_active_sessions",
            "Generation requests in flight through this gateway.",
            registry=r,
        )
        self.routing_table_size = Gauge(
            "gpunet_dht_routing_table_size",
            "Contacts in the local DHT routing table.",
            registry=r,
        )
        self.dht_lookup = Histogram(
            "gpunet_dht_lookup_seconds",
            "Duration of DHT record lookups.",
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self.records_refused = Counter(
            "gpunet_dht_records_refused",
            "DHT records refused, by reason.",
            ["reason"],
            registry=r,
        )
        self._models: set[str] = set()
        self._lock = threading.Lock()

    def model_label(self, name: str) -> str:
        """*name* as a label value, or "other" once MAX_MODEL_LABELS names are in use."""
        with self._lock:
            if name in self._models:
                return name
            if len(self._models) < MAX_MODEL_LABELS:
                self._models.add(name)
                return name
        return OTHER

    def count_request(self, model: str, outcome: Outcome) -> None:
        label = NO_MODEL if model == NO_MODEL else self.model_label(model)
        self.requests.labels(label, outcome.value).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)


DEFAULT = Metrics()


def observe_dht_lookup(seconds: float, metrics: Metrics | None = None) -> None:
    """Hook: one DHT lookup took *seconds*."""
    (metrics or DEFAULT).dht_lookup.observe(max(0.0, seconds))


def count_refused_record(refusal: RecordRefusal, metrics: Metrics | None = None) -> None:
    """Hook: a record was refused for breaking the rule *refusal* names."""
    (metrics or DEFAULT).records_refused.labels(refusal.value).inc()


def set_routing_table_size(size: int, metrics: Metrics | None = None) -> None:
    """Hook: the routing table now holds *size* contacts (push style)."""
    (metrics or DEFAULT).routing_table_size.set(size)


def track_routing_table_size(read: Callable[[], int], metrics: Metrics | None = None) -> None:
    """Hook: read the routing table size by calling *read* at every scrape (pull style).

    *read* runs on the thread that serves /metrics (the trio thread for the gateway) and must
    be quick and never raise; `Dht.routing_table_size` qualifies.
    """
    (metrics or DEFAULT).routing_table_size.set_function(lambda: float(read()))
