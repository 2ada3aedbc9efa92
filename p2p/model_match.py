"""Does a model file answer to what someone asked for: its sha256 or its name.

One rule everywhere (node catalogue, records, provider filters, the gateway's model table):
a sha256 is 64 hex digits compared without regard to case; a name is compared without regard
to case. A sha256 names one exact file; a name may be served by several builds of one model.
"""

from __future__ import annotations


def model_matches(wanted: str, sha256: str, name: str) -> bool:
    """True when *wanted* (a name or a sha256, any case) names the file (*sha256*, *name*)."""
    wanted_l = wanted.lower()
    return wanted_l == sha256.lower() or wanted_l == name.lower()
