"""The kinds of value a setting takes (p2p/settings.py): how each reads from text and from TOML.

Text comes from a flag or an environment variable; a TOML value from config.toml already has a
type, and the file's type must be the right one (``slots = "8"`` is refused: a file is written
once and read for years, so it gets no guessing). Each kind raises `ValueError` with a message
that says what was expected and what came, for `SettingsError` to prefix with where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from p2p.host_port import AddressError, format_host_port, parse_host_port

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _got(value: Any) -> str:
    """A value as an error message quotes it (TOML's own spelling for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Kind:
    """Base: a value read from text (flag, environment) or from TOML, and shown back."""

    metavar = "TEXT"

    def describe(self) -> str:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        raise NotImplementedError

    def from_toml(self, value: Any, base: Path) -> Any:
        """A TOML value; *base* is the file's folder (relative paths start there)."""
        if not isinstance(value, str):
            raise ValueError(f"expected {self.describe()}, got {_got(value)}")
        return self.from_text(value)

    def to_text(self, value: Any) -> str:
        return str(value)

    def to_json(self, value: Any) -> Any:
        return value


@attrs.frozen
class Whole(Kind):
    """An integer in [low, high]."""

    low: int
    high: int
    metavar = "INTEGER"

    def describe(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def from_text(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        return self._checked(value)

    def from_toml(self, value: Any, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_got(value)}")
        return self._checked(value)

    def _checked(self, value: int) -> int:
        if not self.low <= value <= self.high:
            raise ValueError(f"expected {self.describe()}, got {value}")
        return value


@attrs.frozen
class Count(Whole):
    """An integer that a flag counts (`-vv` is 2)."""


@attrs.frozen
class Number(Kind):
    """A number (integer or decimal) in [low, high]."""

    low: float
    high: float
    metavar = "SECONDS"

    def describe(self) -> str:
        return f"a number from {self.low:g} to {self.high:g}"

    def from_text(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        return self._checked(value)

    def from_toml(self, value: Any, base: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_got(value)}")
        return self._checked(float(value))

    def _checked(self, value: float) -> float:
        if not self.low <= value <= self.high:  # also refuses nan
            raise ValueError(f"expected {self.describe()}, got {value:g}")
        return value

    def to_text(self, value: Any) -> str:
        return f"{value:g}"


@attrs.frozen
class Flag(Kind):
    """On or off: `--x/--no-x`, `GPUNET_X=1|0|true|false|yes|no|on|off`, TOML true/false."""

    metavar = "BOOLEAN"

    def describe(self) -> str:
        return "true or false"

    def from_text(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"expected true or false (or 1/0, yes/no, on/off), got {text!r}")

    def from_toml(self, value: Any, base: Path) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_got(value)}")
        return value

    def to_text(self, value: Any) -> str:
        return "true" if value else "false"


@attrs.frozen
class Text(Kind):
    """Any text."""

    metavar: str = "TEXT"  # type: ignore[misc]

    def describe(self) -> str:
        return "a string"

    def from_text(self, text: str) -> str:
        return text


@attrs.frozen
class PathKind(Kind):
    """A file or folder; in the file, relative to the file's folder (the data dir)."""

    directory: bool = False

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return "DIR" if self.directory else "FILE"

    def describe(self) -> str:
        return "a path (a string)"

    def from_text(self, text: str) -> Path:
        if not text.strip():
            raise ValueError("expected a path, got an empty string")
        return Path(text).expanduser()

    def from_toml(self, value: Any, base: Path) -> Path:
        path = super().from_toml(value, base)
        assert isinstance(path, Path)
        return path if path.is_absolute() else base / path

    def to_json(self, value: Any) -> Any:
        return str(value)


@attrs.frozen
class Address(Kind):
    """HOST:PORT (p2p.host_port), kept as (host, port)."""

    default_host: str | None = None  # set: `:PORT` and `PORT` mean this host
    allow_port_zero: bool = False
    metavar = "HOST:PORT"

    def describe(self) -> str:
        return "HOST:PORT"

    def from_text(self, text: str) -> tuple[str, int]:
        try:
            return parse_host_port(
                text, default_host=self.default_host, allow_port_zero=self.allow_port_zero
            )
        except AddressError as exc:
            raise ValueError(str(exc)) from None

    def to_text(self, value: Any) -> str:
        host, port = value
        return format_host_port(host, port)

    def to_json(self, value: Any) -> Any:
        return self.to_text(value)


@attrs.frozen
class IntOrWord(Kind):
    """A whole number ≥ 0 or one word (``auto``), kept as text as the user wrote it."""

    word: str
    metavar: str = "N"  # type: ignore[misc]

    def describe(self) -> str:
        return f"a whole number or '{self.word}'"

    def from_text(self, text: str) -> str:
        word = text.strip().lower()
        if word == self.word:
            return word
        if word.isdigit():
            return str(int(word))
        raise ValueError(f"expected {self.describe()}, got {text!r}")

    def from_toml(self, value: Any, base: Path) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if isinstance(value, str):
            return self.from_text(value)
        raise ValueError(f"expected {self.describe()}, got {_got(value)}")


@attrs.frozen
class Many(Kind):
    """Several values of one kind: a repeated flag, a comma-separated variable, a TOML array."""

    item: Kind

    @property
    def metavar(self) -> str:  # type: ignore[override]
        return self.item.metavar

    def describe(self) -> str:
        return f"a list of {self.item.describe()}"

    def from_text(self, text: str) -> tuple[Any, ...]:
        return tuple(self.item.from_text(part) for part in text.split(",") if part.strip())

    def from_toml(self, value: Any, base: Path) -> tuple[Any, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ValueError(f"expected {self.describe()}, got {_got(value)}")
        return tuple(self.item.from_toml(v, base) for v in items)

    def to_text(self, value: Any) -> str:
        return ", ".join(self.item.to_text(v) for v in value)

    def to_json(self, value: Any) -> Any:
        return [self.item.to_json(v) for v in value]


@attrs.frozen
class WholeOrAuto(Kind):
    """An integer as `whole` takes it, or the word ``auto`` kept as that text (--slots)."""

    whole: Whole
    metavar = "N|auto"

    def describe(self) -> str:
        return f"{self.whole.describe()} or 'auto'"

    def from_text(self, text: str) -> int | str:
        return "auto" if text.strip().lower() == "auto" else self.whole.from_text(text)

    def from_toml(self, value: Any, base: Path) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return self.whole.from_toml(value, base)


class Origin(Text):
    """A browser origin for CORS: `http(s)://host[:port]`, no path (or `*`, any origin)."""

    def describe(self) -> str:
        return "an origin such as https://app.example"

    def from_text(self, text: str) -> str:
        origin = text.strip()
        scheme, sep, rest = origin.partition("://")
        bad_rest = not rest or any(c in rest for c in "/?#@ ")
        if origin != "*" and (scheme not in ("http", "https") or not sep or bad_rest):
            raise ValueError(f"not an origin: {text!r} (try https://app.example)")
        return origin.lower()
