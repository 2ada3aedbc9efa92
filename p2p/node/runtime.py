"""The volunteer node: load models, join the DHT, publish a signed record, answer sessions."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

from crypto.identity import Identity, load_or_create_identity
from crypto.network_key import network_id
from inference.batching import BatchingWorker
from inference.chat import render_chat
from inference.generation import PromptTooLong
from inference.gpu import (
    GpuInfo,
    HostFacts,
    hardware_class,
    probe_gpus,
    probe_host,
    supports_gpu_offload,
)
from inference.llama_lowlevel import LoadFailed
from inference.model_file import ModelFileError, ModelInfo
from inference.offload import OffloadPlan, plan_offload, vram_needed
from inference.worker import (
    GenerationDone,
    GenerationError,
    GenerationRequest,
    WorkerBusy,
)
from p2p.protocol import wire
from p2p.protocol.admission import AdmissionControl
from p2p.client.network_client import Client
from p2p.dht.node import Dht, open_dht
from p2p.api.app import serve_gateway
from p2p.session.local import Connection
from p2p.dht.records import (
    DEFAULT_TTL_S,
    CapabilityRecord,
    CpuEntry,
    GpuEntry,
    LoadEntry,
    ModelEntry,
    sign_record,
)
from p2p.session.secure import SessionError, serve_sessions
from p2p.session.pool import SessionPool
from p2p.version import SOFTWARE_VERSION

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_CONNECTION = 64  # a gateway multiplexes many users over one session
# A request may hold a slot this long at most; past it the client is told to go elsewhere.
REQUEST_DEADLINE_S = 600.0
# On SIGTERM/Ctrl-C in-flight requests get this long to finish before they are cut (and their
# clients fail over to another node).
DEFAULT_GRACE_S = 30.0
# Seconds of self-benchmark per model at start: enough for a stable tok/s on a small model.
SELF_BENCHMARK_S = 1.5


class NodeError(Exception):
    """The node cannot start or keep running; one-line message for the user."""


@attrs.frozen
class NodeConfig:
    data_dir: Path
    models: tuple[ModelInfo, ...]
    host: str = "127.0.0.1"
    dht_port: int = 8468
    port: int = 8469
    bootstrap: tuple[tuple[str, int], ...] = ()
    ttl_s: float = DEFAULT_TTL_S
    n_ctx: int = 2048
    n_threads: int | None = None
    max_queue: int = 8
    grace_s: float = DEFAULT_GRACE_S
    psk: bytes | None = None  # private network key; None: the public network
    api: tuple[str, int] | None = None  # serve the OpenAI gateway here too
    api_key: str | None = None
    slots: int = 4  # sequences decoded together per model (continuous batching)
    # Requests in flight on the whole node (None: every model's slots + queue); beyond it the
    # answer is `busy` at once. 0 announces the node but serves nothing (maintenance, tests).
    max_requests: int | None = None
    gpu_layers: str = "auto"  # --gpu-layers: auto | N | 0
    benchmark: bool = True  # measure each model's speed at start (published; clients rank by it)
    prompt_cache: bool = True  # reuse a slot's cached prompt prefix (inference/batching.py)
    speculate: bool = True  # greedy requests draft from their repeats (inference/speculation.py)


@attrs.frozen
class NodeReady:
    peer_id: str
    dht_address: str
    session_address: str
    models: tuple[ModelInfo, ...]
    api_url: str | None = None


@attrs.define
class ServedModel:
    info: ModelInfo
    worker: BatchingWorker
    plan: OffloadPlan | None = None
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0


def advertised_host(host: str) -> str:
    """The address peers should dial: the bind address, unless it is a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return host


SEQ_FILE = "record-seq"  # the last sequence number signed, so a restart never goes backwards


def _read_seq(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _write_seq(path: Path, seq: int) -> None:
    """Milliseconds since the epoch already move forward; the file covers a clock set back."""
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(seq))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot persist the record sequence number in %s: %s", path, exc)


class Node:
    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.served: list[ServedModel] = []
        self.gpus: list[GpuInfo] = []
        self.active_requests = 0
        self.draining = False
        self.admission = AdmissionControl(clock=time.monotonic)
        self._request_ended = trio.Event()
        self._seq_file = config.data_dir / SEQ_FILE
        self._seq = _read_seq(self._seq_file)
        self.network_id = network_id(config.psk) if config.psk is not None else None

    def total_slots(self) -> int:
        return sum(m.worker.slots for m in self.served)

    def find_model(self, wanted: str) -> ServedModel | None:
        wanted_l = wanted.lower()
        for m in self.served:
            if wanted_l in (m.info.sha256, m.info.name.lower()):
                return m
        return None

    def build_record(self, session_address: str) -> CapabilityRecord:
        now = time.time()
        # Milliseconds since the epoch: a restarted node's records still sort after its old ones.
        self._seq = max(self._seq + 1, int(now * 1000))
        _write_seq(self._seq_file, self._seq)
        # CPU, RAM and the llama.cpp build do not change while the node runs: probed once.
        host: HostFacts | None = getattr(self, "_host", None)
        if host is None:
            host = self._host = probe_host()
        on_gpu = host.gpu_offload and any(m.worker.n_gpu_layers > 0 for m in self.served)
        return CapabilityRecord(
            peer_id=self.identity.peer_id,
            public_key=self.identity.public_key,
            addresses=(session_address,),
            software_version=SOFTWARE_VERSION,
            seq=self._seq,
            issued_at=now,
            expires_at=now + self.config.ttl_s,
            gpus=tuple(
                GpuEntry(
                    name=g.name[:200],
                    vram_total=g.vram_total,
                    vram_free=g.vram_free,
                    compute_capability=g.compute_capability,
                    driver_version=g.driver_version,
                    cuda_version=g.cuda_version,
                    utilization_pct=g.utilization_pct,
                )
                for g in self.gpus
            ),
            cpu=CpuEntry(
                cores=host.cores,
                ram_bytes=host.ram_bytes,
                simd=host.cpu_flags,
                gpu_offload=host.gpu_offload,
            ),
            build=host.build,
            hardware_class=hardware_class(
                self.gpus, offload=on_gpu, cpu_flags=host.cpu_flags, machine=host.machine
            ),
            models=tuple(
                ModelEntry(
                    sha256=m.info.sha256,
                    name=m.info.name,
                    architecture=m.info.architecture[:200],
                    parameter_count=m.info.parameter_count,
                    quantization=m.info.quantization,
                    context_length=m.info.context_length,
                    layers_offloaded=max(0, min(m.worker.n_gpu_layers, m.info.layer_count)),
                    decode_tok_s=round(m.decode_tok_s, 1),
                    prefill_tok_s=round(m.prefill_tok_s, 1),
                    layers_total=m.info.layer_count,
                )
                for m in self.served
            ),
            network_id=self.network_id,
            load=LoadEntry(
                active_requests=self.active_requests,
                free_slots=0
                if self.draining
                else max(0, self.total_slots() - self.active_requests),
                queue_depth=0,
            ),
        )

    async def handle_connection(self, conn: Connection) -> None:
        scopes: dict[int, trio.CancelScope] = {}
        async with trio.open_nursery() as nursery:
            while True:
                msg = await conn.receive()
                if msg is None:
                    break
                if isinstance(msg, wire.Generate):
                    refusal = None
                    if msg.id in scopes:
                        refusal = wire.Error(msg.id, wire.ErrorCode.BAD_REQUEST, "duplicate id")
                    elif len(scopes) >= MAX_REQUESTS_PER_CONNECTION:
                        refusal = wire.Error(
                            msg.id, wire.ErrorCode.BUSY, "too many requests on this connection"
                        )
                    if refusal is not None:
                        await conn.send(refusal)
                        continue
                    scope = trio.CancelScope()
                    scopes[msg.id] = scope
                    nursery.start_soon(self._run_generate, conn, msg, scope, scopes)
                elif isinstance(msg, wire.Cancel):
                    if msg.id in scopes:
                        scopes[msg.id].cancel()
                elif isinstance(msg, wire.Ping):
                    await conn.send(wire.Pong(msg.id))
                else:
                    await conn.send(
                        wire.Error(msg.id, wire.ErrorCode.BAD_REQUEST, "unexpected message")
                    )
            # The client closed the connection: stop generating for it now.
            nursery.cancel_scope.cancel()

    async def _run_generate(
        self,
        conn: Connection,
        msg: wire.Generate,
        scope: trio.CancelScope,
        scopes: dict[int, trio.CancelScope],
    ) -> None:
        try:
            with scope:
                await self._generate(conn, msg)
        except SessionError:
            pass  # the client went away; the scope of the connection ends too
        finally:
            scopes.pop(msg.id, None)

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.active_requests:
            await self._request_ended.wait()

    async def _generate(self, conn: Connection, msg: wire.Generate) -> None:
        if self.draining:
            await conn.send(
                wire.Error(msg.id, wire.ErrorCode.SHUTTING_DOWN, "node is shutting down")
            )
            return
        limit = self.config.max_requests
        if limit is not None and self.active_requests >= limit:
            await conn.send(wire.Error(msg.id, wire.ErrorCode.BUSY, "node is busy; try another"))
            return
        refusal = self.admission.try_admit(conn.remote_peer_id)
        if refusal is not None:
            text = "too many requests from you at once" if refusal == "busy" else "slow down"
            await conn.send(wire.Error(msg.id, refusal, text))
            return
        self.active_requests += 1
        try:
            with trio.move_on_after(REQUEST_DEADLINE_S) as deadline:
                await self._serve_request(conn, msg)
            if deadline.cancelled_caught:
                await conn.send(
                    wire.Error(msg.id, wire.ErrorCode.INTERNAL, "request ran past the deadline")
                )
        finally:
            self.active_requests -= 1
            self.admission.release(conn.remote_peer_id)
            self._request_ended.set()
            self._request_ended = trio.Event()

    async def _serve_request(self, conn: Connection, msg: wire.Generate) -> None:
        served = self.find_model(msg.model)
        if served is None:
            offered = ", ".join(m.info.name for m in self.served)
            await conn.send(
                wire.Error(
                    msg.id,
                    wire.ErrorCode.UNKNOWN_MODEL,
                    f"{msg.model!r:.80} is not served here; this node serves: {offered}",
                )
            )
            return
        prompt = msg.prompt
        if msg.messages:
            try:
                prompt = render_chat(
                    [{"role": m.role, "content": m.content} for m in msg.messages],
                    architecture=served.info.architecture,
                    chat_template=served.info.chat_template,
                )
            except ValueError as exc:
                await conn.send(wire.Error(msg.id, wire.ErrorCode.BAD_REQUEST, str(exc)))
                return
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=msg.max_tokens,
            temperature=msg.temperature,
            top_p=msg.top_p,
            seed=msg.seed,
            stop=msg.stop,  # type: ignore[arg-type]  # attrs converter confuses mypy
            replay_tokens=msg.replay_tokens,
            reproducible=msg.reproducible,
        )
        try:
            async with served.worker.generate(request) as stream:
                async for item in stream:
                    if isinstance(item, GenerationDone):
                        await conn.send(
                            wire.Done(
                                msg.id,
                                item.finish_reason,
                                item.prompt_tokens,
                                item.completion_tokens,
                                item.time_to_first_token_s,
                                item.decode_tokens_per_s,
                                item.token_ids,
                                item.cached_prompt_tokens,
                            )
                        )
                    else:
                        await conn.send(wire.Token(msg.id, item.text, item.token_ids))
        except WorkerBusy:
            await conn.send(wire.Error(msg.id, wire.ErrorCode.BUSY, "node is busy; try another"))
        except GenerationError as exc:
            too_long = isinstance(exc, PromptTooLong)
            code = wire.ErrorCode.TOO_LONG if too_long else wire.ErrorCode.BAD_REQUEST
            await conn.send(wire.Error(msg.id, code, str(exc)))
        except SessionError:
            raise
        except Exception as exc:
            log.exception("generation failed")
            await conn.send(
                wire.Error(msg.id, wire.ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")
            )

    async def publish_forever(self, dht: Dht, session_address: str) -> None:
        """Republish well before expiry, so a record never lapses while the node lives."""
        while True:
            signed = sign_record(self.build_record(session_address), self.identity)
            accepted = await dht.publish(signed)
            log.info(
                "published record seq %d (%d remote stores accepted)", signed.record.seq, accepted
            )
            await trio.sleep(self.config.ttl_s / 3)


def _memory_estimate(info: ModelInfo, n_ctx: int, n_seq: int) -> str:
    if info.layout is None:
        return ""
    need = vram_needed(info.layout, info.layer_count + 1, n_ctx=n_ctx, n_seq=n_seq)
    size = f"{need / 2**30:.1f} GiB" if need >= 2**30 else f"{need / 2**20:.0f} MiB"
    return (
        f"; it needs about {size} (weights and a KV cache of {n_seq} slots "
        f"x {n_ctx} tokens: try fewer --slots)"
    )


async def load_models(
    config: NodeConfig,
    gpus: Sequence[GpuInfo] = (),
    *,
    benchmark: bool = True,
    on_progress: Callable[[str], None] = lambda _line: None,
) -> list[ServedModel]:
    """Start one batching worker per model, offloaded as the planner decides for the free VRAM,
    then measure its prefill/decode speed (published in the record; clients rank by it).

    A model llama.cpp cannot load (unknown architecture, out of memory) is left out with a
    warning, so the node still serves the others; NodeError when none loads.
    """
    served: list[ServedModel] = []
    problems: list[str] = []
    offload_ok = supports_gpu_offload()
    for info in config.models:
        n_ctx = min(config.n_ctx, info.context_length or config.n_ctx)
        plan = plan_offload(
            info, gpus, n_ctx, config.gpu_layers, n_seq=config.slots, offload_supported=offload_ok
        )
        log.info("%s: %s", info.name, plan.reason)
        on_progress(f"loading {info.name}: {plan.reason}")
        worker = BatchingWorker(
            Path(info.path),
            n_ctx=n_ctx,
            n_threads=config.n_threads or os.cpu_count(),
            n_gpu_layers=plan.n_gpu_layers,
            tensor_split=plan.tensor_split or None,
            max_queue=config.max_queue,
            slots=config.slots,
            prefix_cache=config.prompt_cache,
            speculate=config.speculate,
        )
        try:
            await worker.start()
        except ModelFileError as exc:
            oom = isinstance(exc, LoadFailed) and exc.out_of_memory
            reason = f"{exc}{_memory_estimate(info, n_ctx, config.slots) if oom else ''}"
            log.warning("not serving %s: %s", info.name, reason)
            on_progress(f"not serving {info.name}: {reason}")
            problems.append(reason)
            await worker.aclose()
            continue
        model = ServedModel(info, worker, plan)
        if benchmark:
            on_progress(f"measuring {info.name}'s speed ({SELF_BENCHMARK_S:g} s)...")
            speed = await worker.measure_throughput(budget_s=SELF_BENCHMARK_S)
            model.prefill_tok_s, model.decode_tok_s = speed.prefill_tok_s, speed.decode_tok_s
            on_progress(
                f"{info.name}: prefill {speed.prefill_tok_s:.0f} tok/s, "
                f"decode {speed.decode_tok_s:.1f} tok/s"
            )
        served.append(model)
    if not served:
        raise NodeError("no model could be loaded: " + "; ".join(problems[:3]))
    return served


async def run_node(
    config: NodeConfig,
    *,
    identity: Identity | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[NodeReady] = trio.TASK_STATUS_IGNORED,
    on_progress: Callable[[str], None] = lambda _line: None,
) -> None:
    """Serve until cancelled, or until *shutdown* is set: then stop announcing, refuse new
    requests, give in-flight ones `config.grace_s` to finish, cut the rest, and return."""
    if identity is None:
        identity = load_or_create_identity(config.data_dir / "identity.pem")
    node = Node(config, identity)
    node.gpus = await trio.to_thread.run_sync(probe_gpus)
    node.served = await load_models(
        config, node.gpus, benchmark=config.benchmark, on_progress=on_progress
    )
    try:
        async with open_dht(
            identity, config.host, config.dht_port, network_id=node.network_id
        ) as dht:
            await _join(dht, config.bootstrap)
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(
                        serve_sessions,
                        identity,
                        config.host,
                        config.port,
                        node.handle_connection,
                        psk=config.psk,
                    )
                )
                host = advertised_host(config.host)
                session_port = listeners[0].socket.getsockname()[1]
                session_address = f"{host}:{session_port}"
                signed = sign_record(node.build_record(session_address), identity)
                await dht.publish(signed)
                api_url = None
                if config.api is not None:
                    client = Client(
                        dht,
                        identity,
                        SessionPool(
                            identity, nursery, psk=config.psk, local=node.handle_connection
                        ),
                        network_id=node.network_id,
                    )
                    api_url = await nursery.start(
                        partial(serve_gateway, client, *config.api, api_key=config.api_key)
                    )
                publishing = trio.CancelScope()
                nursery.start_soon(_republish_later, node, dht, session_address, publishing)
                task_status.started(
                    NodeReady(
                        peer_id=identity.peer_id,
                        dht_address=f"{host}:{dht.port}",
                        session_address=session_address,
                        models=tuple(m.info for m in node.served),
                        api_url=api_url,
                    )
                )
                if shutdown is not None:
                    await shutdown.wait()
                    await _drain(node, dht, session_address, publishing)
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for m in node.served:
                await m.worker.aclose()


async def _republish_later(
    node: Node, dht: Dht, session_address: str, scope: trio.CancelScope
) -> None:
    with scope:
        await trio.sleep(node.config.ttl_s / 3)
        await node.publish_forever(dht, session_address)


async def _drain(node: Node, dht: Dht, session_address: str, publishing: trio.CancelScope) -> None:
    node.draining = True
    publishing.cancel()
    # A last record with no free slot, so clients that still find it rank this node last.
    with trio.move_on_after(2):
        await dht.publish(sign_record(node.build_record(session_address), node.identity))
    with trio.move_on_after(node.config.grace_s):
        await node.wait_idle()


async def _join(dht: Dht, bootstrap: Sequence[tuple[str, int]]) -> None:
    if not bootstrap:
        return
    answered = await dht.bootstrap(list(bootstrap))
    if answered == 0:
        listed = ", ".join(f"{h}:{p}" for h, p in bootstrap)
        raise NodeError(
            f"no bootstrap peer answered ({listed}); is a gpunet node of this network "
            "running there (same --network-key, or none)?"
        )
