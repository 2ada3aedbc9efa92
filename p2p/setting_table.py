"""The table of every setting: one `Setting` per option of `gpunet node`, `gpunet gateway` and
the commands they share (p2p/settings.py says how a value is chosen among flag, environment,
config.toml and default). New options are one entry here, in the section of the command that
takes them.
"""

from __future__ import annotations

from typing import Any

import attrs

from inference.prompt_probes import DEFAULT_PROBES, MAX_PROBES
from p2p.node_setting_kinds import Hours, Size
from p2p.setting_kinds import (
    Address,
    Count,
    Flag,
    IntOrWord,
    Kind,
    Many,
    Number,
    Origin,
    PathKind,
    Text,
    Whole,
    WholeOrAuto,
)

ENV_PREFIX = "GPUNET_"
CONFIG_FILENAME = "config.toml"
COMMON = ""  # the section of shared settings: the file's top level

NODE = "node"
GATEWAY = "gateway"
CLIENTS = ("ask", "peers", "pull")
ALL_COMMANDS = (NODE, GATEWAY, *CLIENTS)

# The gateway's place when nothing says otherwise; the same as p2p/api/app.py's
# DEFAULT_API_HOST/PORT (beside the node's 8468 UDP and 8469 TCP).
DEFAULT_API_ADDRESS = ("127.0.0.1", 8470)
DEFAULT_QUEUE_TIMEOUT_S = 60.0
# Spot checks (p2p/client/spot_check.py): at 0.13 a node serving another model (caught on every
# checked request) is caught within 50 requests with probability 1 - 0.87**50 > 99.9 %; one
# check (32 scored positions) measured ~0.21 of the request's generation in CPU time on a quiet
# CPU verifier (all 128 positions: 0.41), so ~2.7 % extra compute (issue 16's bound: 2 %).
DEFAULT_VERIFY_FRACTION = 0.13


@attrs.frozen
class Setting:
    """One option: where it lives in the file, its flag, and its variable (``GPUNET_<KEY>``)."""

    key: str
    kind: Kind
    default: Any
    help: str
    section: str = COMMON  # COMMON (the file's top level) or a command's table
    commands: tuple[str, ...] = ALL_COMMANDS  # the commands that take it (as a flag)
    flag: str | None = None  # None: `--` + key with dashes; "" for none at all
    in_file: bool = True
    secret: bool = False  # shown as hidden by `gpunet config`
    default_text: str | None = None  # what the default means, when it is None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def flag_name(self) -> str | None:
        if self.flag == "":
            return None
        return self.flag or "--" + self.key.replace("_", "-")

    @property
    def name(self) -> str:
        """The key as the file spells it: ``slots`` under [node] is ``node.slots``."""
        return f"{self.section}.{self.key}" if self.section else self.key


_PORT = Whole(0, 65535)
_API = Address(default_host=DEFAULT_API_ADDRESS[0], allow_port_zero=True)


def _node(key: str, kind: Kind, default: Any, help: str, **more: Any) -> Setting:
    return Setting(key, kind, default, help, section=NODE, commands=(NODE,), **more)


def _gateway(key: str, kind: Kind, default: Any, help: str, **more: Any) -> Setting:
    return Setting(key, kind, default, help, section=GATEWAY, commands=(GATEWAY,), **more)


# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # --- shared: the top of config.toml ---------------------------------------------------------
    Setting(
        "data_dir", PathKind(directory=True), None,
        "Where the identity key, config.toml and node state live.",
        in_file=False, default_text="the user data dir",
    ),
    Setting(
        "bootstrap", Many(Address()), (),
        "DHT address of a node already in the network (repeatable). Clients default to the node "
        "started from the same data dir.",
        default_text="none, a node starts a new network",
    ),
    Setting(
        "network_key", PathKind(), None,
        "Key file of a private network (`gpunet identity network-key new FILE`).",
        default_text="none, the public network",
    ),
    Setting("verbose", Count(0, 9), 0, "More diagnostics on stderr (repeat for more).", flag="-v"),
    Setting(
        "api_key", Text("KEY"), None, "Require 'Authorization: Bearer KEY' on the OpenAI API.",
        commands=(NODE, GATEWAY), secret=True, default_text="none, no key asked",
    ),
    Setting(
        "key_passphrase", Text("PASSPHRASE"), None,
        "Passphrase of an encrypted identity key file (for services; at a terminal it is "
        "prompted for).",
        commands=(), flag="", in_file=False, secret=True,
        default_text="none, prompted for at a terminal",
    ),
    Setting(
        "verify_fraction", Number(0, 1), DEFAULT_VERIFY_FRACTION,
        "Fraction of requests spot-checked on another provider of the same model file, in the "
        "background (docs/security.md). A check costs about 14 % of generating on a CPU "
        "verifier (docs/benchmarks.md), so 0.13 adds about 2 % compute and catches a node "
        "serving another model within 50 requests; 0 checks nothing, 1 every request.",
        commands=(NODE, GATEWAY, "ask"),
    ),
    Setting(
        "probes", Whole(0, MAX_PROBES), DEFAULT_PROBES,
        "Prompt probes per request sent (by ask, the gateway, node --api): random prompt "
        "positions whose log-probability the serving node signs, so a spot check sees whether "
        "it computed the whole prompt. They cost the node about 2-5 % of a request on a CPU. 0 "
        "sends none: the node computes no extra rows, and spot checks can no longer catch a "
        "node that skips part of the prompt (docs/security.md).",
        commands=(NODE, GATEWAY, "ask"),
    ),
    Setting(
        "cors", Many(Origin("ORIGIN")), (),
        "Let web pages from ORIGIN call the OpenAI API from a browser (CORS; repeatable or a "
        "comma list; * for any page). Pages still need the --api-key if one is set.",
        commands=(NODE, GATEWAY), default_text="none, CORS off",
    ),
    # --- gpunet node: [node] ----------------------------------------------------------------------
    _node(
        "models", Many(PathKind()), (),
        "GGUF file or folder of GGUF files to serve (repeatable); a model name or sha256 that is "
        "no file is taken from the model cache, or fetched from --bootstrap's network first.",
        flag="--model", default_text="Gemma 3 270M",
    ),
    _node("host", Text("HOST"), "127.0.0.1", "Address to bind; 0.0.0.0 to accept other machines."),
    _node(
        "name", Text("TEXT"), None,
        "A name for this node that `gpunet peers` and the dashboard show (printable, at most 64 "
        "characters; others may pick the same one, so it identifies nothing).",
        default_text="none",
    ),
    _node("dht_port", _PORT, 8468, "UDP port of the DHT (0: any free port)."),
    _node("port", _PORT, 8469, "TCP port of encrypted sessions (0: any free port)."),
    _node(
        "threads", Whole(1, 512), None,
        "CPU threads for llama.cpp, for decoding and for prompts.",
        default_text="the physical cores",
    ),
    _node(
        "ctx_size", Whole(16, 1 << 20), None,
        "Context of each request in tokens (prompt and answer); at most the model's trained "
        "context. Each slot keeps a KV cache this long: more context, more memory.",
        default_text="on a GPU that holds the whole model, the most up to 8192 that fits every "
        "slot's KV cache beside it; else 2048",
    ),
    _node(
        "slots", WholeOrAuto(Whole(1, 64)), "auto",
        "Requests decoded together per model (continuous batching). auto measures at start "
        "how aggregate decode grows with concurrent requests on this machine and takes the "
        "count where it stops growing, within the memory for their KV cache (needs "
        "--benchmark; without it, 4).",
    ),
    _node(
        "gpu_layers", IntOrWord("auto", metavar="N|auto|0"), "auto",
        "Layers to offload to the GPU: auto fits them to free VRAM, 0 keeps the CPU.",
    ),
    _node(
        "max_vram", Size(), None,
        "VRAM the node may use over all GPUs, e.g. 6G or 6000M (powers of 1024): layers, KV "
        "cache and context are planned within it, leaving the rest to your other programs.",
        default_text="all that is free",
    ),
    _node(
        "max_queue", Whole(0, 1024), 8,
        "Requests allowed to wait per model; beyond it the node answers busy at once.",
    ),
    _node(
        "max_requests", Whole(0, 100_000), None,
        "Requests in flight on the node; beyond it the node answers busy. 0 announces the node "
        "but serves nothing.",
        default_text="slots + queue of every model",
    ),
    _node(
        "join_timeout", Number(0, 3600), 180.0,
        "Seconds the node keeps retrying its --bootstrap peers while none answers (a service "
        "started before its bootstrap peer); 0 gives up at the first try.",
    ),
    _node(
        "log_file", PathKind(), None,
        "Also append the node's log (one line per served request, warnings) to this file.",
        default_text="none, stderr only",
    ),
    _node(
        "grace", Number(0, 3600), 30.0,
        "Seconds in-flight requests get to finish on Ctrl-C/SIGTERM.",
    ),
    _node(
        "serve_hours", Hours(), None,
        "Serve only during these hours of local time, e.g. 22-07 or 08:30-17:00,19-23; outside "
        "them the node stays in the network paused (as `gpunet pause`), finishing requests in "
        "flight.",
        default_text="all day",
    ),
    _node(
        "api", _API, None,
        "Also serve the OpenAI-compatible API, dashboard and metrics here (e.g. 127.0.0.1:8470).",
        default_text="none, no API",
    ),
    _node(
        "benchmark", Flag(), True,
        "Measure each model's prefill and decode speed at start (about 1.5 s a model); the "
        "record publishes it and clients prefer faster nodes. Without it the node counts as "
        "average.",
    ),
    _node(
        "prompt_cache", Flag(), True,
        "Keep each slot's last prompt and answer in the KV cache, so a request that starts the "
        "same way skips that part of the prefill.",
    ),
    _node(
        "speculate", Flag(), True,
        "Greedy requests whose text repeats itself (lists, loops, quoted prompt) guess the "
        "repeat's next tokens and check them in one step: the same greedy tokens, sooner.",
    ),
    _node(
        "port_mapping", Flag(), True,
        "Ask the home router (UPnP-IGD, NAT-PMP or PCP) to forward the DHT and session ports to "
        "this node, renewed while it runs and removed when it stops, so peers can dial it behind "
        "a NAT.",
    ),
    _node(
        "hole_punch", Flag(), True,
        "Upgrade sessions that come through a relay to direct ones by a TCP hole punch (both "
        "sides dial at once). Off: this node neither starts nor answers punches; relayed "
        "sessions stay relayed.",
    ),
    _node(
        "relay", Flag(), True,
        "Relay for volunteers behind NAT that nobody can dial (only while this node is reachable "
        "itself): the relay forwards their end-to-end encrypted sessions and cannot read them.",
    ),
    _node(
        "relay_max_reservations", Whole(0, 1024), 32,
        "Volunteers behind NAT this node relays for at once; beyond it they are refused "
        "(relay_full) and reserve at another relay.",
    ),
    _node(
        "relay_max_circuits", Whole(0, 4096), 48,
        "Relayed sessions at once, all volunteers together (each costs two sockets).",
    ),
    _node(
        "relay_bytes_per_s", Whole(1024, 1 << 34), 4 * 1024 * 1024,
        "Bytes per second relayed for one volunteer, both directions together.",
    ),
    _node(
        "share", Flag(), True,
        "Share the GGUF files this node serves with peers that fetch them (`gpunet pull`), by "
        "sha256 and chunk by chunk, within --share-rate.",
    ),
    _node(
        "share_rate", Whole(0, 1_000_000), 50,
        "Upload for sharing model files in MB/s, all peers together (one peer gets at most "
        "half of it); 0: no cap.",
    ),
    # --- gpunet gateway: [gateway] ----------------------------------------------------------------
    _gateway(
        "api", _API, DEFAULT_API_ADDRESS,
        "Where to serve the OpenAI API, dashboard and metrics (port 0: any free port).",
    ),
    _gateway(
        "queue_timeout", Number(0, 3600), DEFAULT_QUEUE_TIMEOUT_S,
        "Seconds a request waits while every provider is busy before it gets a 503.",
    ),
)
# fmt: on
