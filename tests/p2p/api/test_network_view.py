"""The model table of /v1/models and the dashboard, from signed records — plain calls."""

from __future__ import annotations

import json

from crypto.identity import Identity
from p2p.api.network_view import model_table
from p2p.dht.records import ModelEntry
from tests.p2p.dht.test_records import SHA, make_record


def test_model_table_counts_providers_and_lists_clashing_names_by_sha256() -> None:
    other_sha = "cd" * 32
    same = [make_record(Identity.generate()) for _ in range(2)]  # tiny-llama, SHA, twice
    table = model_table(same)
    assert [(e["id"], e["providers"]) for e in table] == [("tiny-llama", 2)]
    clash = make_record(
        Identity.generate(),
        models=(ModelEntry(other_sha, "tiny-llama", "llama", 1000, "Q4_0", 512, 0, 2),),
    )
    ids = {e["id"] for e in model_table([*same, clash])}
    assert ids == {SHA, other_sha}
    json.dumps(model_table([*same, clash]))  # plain data, JSON-ready


def test_the_context_shown_is_one_every_provider_runs() -> None:
    """Nodes choose --ctx-size: /v1/models shows what a request may use wherever it lands."""
    big, small = (
        make_record(
            Identity.generate(),
            models=(ModelEntry(SHA, "tiny-llama", "llama", 1000, "F32", ctx, 0, 2),),
        )
        for ctx in (512, 256)
    )
    assert [e["context_length"] for e in model_table([big, small])] == [256]
    assert [e["context_length"] for e in model_table([big])] == [512]
