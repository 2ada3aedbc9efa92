"""Kinds of two node settings (p2p/setting_kinds.py has the general ones): a size in bytes
(`--max-vram 6G`) and a schedule of hours (`--serve-hours 22-07`), each read by the module that
knows its rules, so a flag, a variable and config.toml fail alike with the same message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from inference.memory_plan import format_size, parse_size
from p2p.node.serve_hours import EXAMPLES, ServeHours
from p2p.setting_kinds import Kind


@attrs.frozen
class Size(Kind):
    """Bytes, written 6G, 6000M, 5.5GiB (powers of 1024); in config.toml also a number of
    bytes."""

    metavar: str = "SIZE"  # type: ignore[misc]

    def describe(self) -> str:
        return "a size such as 6G or 6000M"

    def from_text(self, text: str) -> int:
        return parse_size(text)

    def from_toml(self, value: Any, base: Path) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return super().from_toml(value, base)  # type: ignore[no-any-return]

    def to_text(self, value: Any) -> str:
        return format_size(value)


@attrs.frozen
class Hours(Kind):
    """Ranges of local time, e.g. 22-07 or 08:30-17:00,19-23 (p2p/node/serve_hours.py)."""

    metavar: str = "HH-HH"  # type: ignore[misc]

    def describe(self) -> str:
        return f"hours of the day ({EXAMPLES})"

    def from_text(self, text: str) -> ServeHours:
        return ServeHours.parse(text)

    def to_text(self, value: Any) -> str:
        return str(value)

    def to_json(self, value: Any) -> Any:
        return str(value)
