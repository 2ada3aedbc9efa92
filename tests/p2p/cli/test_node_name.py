"""`--name`: from the flag (checked at once) into the signed record, and shown by `gpunet peers`
as a stranger's text. The dashboard's side is tests/p2p/api/test_dashboard.py."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from crypto.identity import Identity
from p2p.cli.main import main
from p2p.cli.peers import describe
from p2p.dht.records import MAX_NODE_NAME, open_record, record_to_json, sign_record
from p2p.settings import SETTINGS
from tests.p2p.dht.test_records import make_record
from tests.p2p.node.test_capability import record


@pytest.fixture(autouse=True)
def no_gpunet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)


@pytest.mark.parametrize("bad", ["tab\there", "line\nbreak", "x" * (MAX_NODE_NAME + 1)])
def test_a_bad_name_fails_before_the_node_starts(bad: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["node", "--data-dir", str(tmp_path), "--name", bad])
    assert result.exit_code == 1, result.output
    assert "--name" in result.stderr and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # refused before the data dir was touched


def test_the_name_is_in_the_signed_record() -> None:
    ident = Identity.generate()
    named = record(name="rack 7")  # p2p/node/capability.py, as build_record passes it
    assert named.name == "rack 7"
    assert record().name == ""
    mine = make_record(ident)
    opened = open_record(
        sign_record(attrs.evolve(mine, name="rack 7"), ident).blob, now=mine.issued_at
    )
    assert opened.record.name == "rack 7"
    assert record_to_json(opened.record)["name"] == "rack 7"


def test_peers_shows_the_name_quoted() -> None:
    plain = make_record(Identity.generate())
    assert "'" not in describe(plain)[0]
    named = attrs.evolve(plain, name="it's <mine>")
    first = describe(named)[0]
    assert first.startswith(plain.peer_id[:16] + '  "it\'s <mine>"  ')
