"""tools/attack_drill.py's own parts, fast: its hand-signed records are records, its options are
bounded, its report has one line per attack. The drill itself starts processes for minutes and
is run by hand (`python tools/attack_drill.py --help`)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from crypto.identity import Identity
from p2p.dht import records
from tools import _attack_dht as dht_attacks
from tools import attack_drill
from tools.attack_drill import ROOT


def test_hand_signed_records_open_with_this_trees_rules() -> None:
    """The drill signs plain maps (to send lies the validators refuse): an honest-shaped one
    must be what `open_record` reads, or every DHT attack would measure a refusal."""
    ident = Identity.generate()
    model = dht_attacks.model_entry("ab" * 32, "tiny-llama")
    blob = dht_attacks.sign_plain(dht_attacks.plain_record(ident, ["127.0.0.1:9"], [model]), ident)
    opened = records.open_record(blob, now=time.time())
    assert opened.record.peer_id == ident.peer_id and opened.record.serves("tiny-llama")


def test_the_crowd_out_record_is_as_large_as_a_record_may_be() -> None:
    ident = Identity.generate()
    model = dht_attacks.model_entry("ab" * 32, "tiny-llama")
    blob = dht_attacks.max_size_record(ident, ["127.0.0.1:9"], [model], records.MAX_TTL_S)
    assert records.MAX_RECORD_BYTES - 400 < len(blob) <= records.MAX_RECORD_BYTES
    assert records.open_record(blob, now=time.time()).record.gpus


def test_options_are_bounded() -> None:
    assert attack_drill.parse_args([]).sessions == 2000
    for bad in (["--sessions", "0"], ["--sybil-networks", "300"], ["--only", "nope"]):
        with pytest.raises(SystemExit):
            attack_drill.parse_args(bad)


def test_a_failed_attack_is_reported_as_such() -> None:
    line = attack_drill.summary("tarpit", {"error": "TooSlowError: "})
    assert line.startswith("tarpit: the attack itself failed")


def test_help_explains_every_attack() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/attack_drill.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for name in attack_drill.ATTACKS:
        assert name in out
