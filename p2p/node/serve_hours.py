"""`--serve-hours 22-07`: the hours of the day a node takes requests, as a pure schedule.

Ranges of local wall-clock time, comma-separated: ``22-07`` (10 pm to 7 am, across midnight),
``08:30-17:00``, ``12-13,18-23``. A range includes its start and excludes its end; ``24`` (or
``24:00``) is the end of the day. Given a time, the schedule says whether it is inside and when
that next changes; the trio task that pauses and resumes the node at those edges is
p2p/node/pause.py's. Times are naive local `datetime`s: across a DST change an edge may come an
hour early or late by the new clock, which the task's periodic re-check corrects within a minute.
"""

from __future__ import annotations

import datetime as dt

import attrs

MINUTES_PER_DAY = 24 * 60
MAX_RANGES = 24
EXAMPLES = "e.g. 22-07, 08:30-17:00 or 12-13,18-23"


class ServeHoursError(ValueError):
    """A schedule that cannot be read; the message says what is wrong and shows examples."""


@attrs.frozen
class HourRange:
    start: int  # minutes after midnight, 0..1439
    end: int  # minutes after midnight, 1..1440; below start: the range crosses midnight

    def contains(self, minute: float) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def _clock_time(text: str, whole: str) -> int:
    hours, sep, minutes = text.strip().partition(":")
    if not hours.isdigit() or (sep and not (minutes.isdigit() and len(minutes) == 2)):
        raise ServeHoursError(
            f"{text.strip()!r:.20} in {whole!r:.80} is not a time (H, HH or HH:MM); {EXAMPLES}"
        )
    h, m = int(hours), int(minutes or 0)
    if h > 24 or m > 59 or (h == 24 and m):
        raise ServeHoursError(
            f"{text.strip()!r:.20} is not a time of day (00:00 to 24:00); {EXAMPLES}"
        )
    return h * 60 + m


@attrs.frozen
class ServeHours:
    """The schedule; `text` is what the user wrote (shown back by `gpunet status`)."""

    ranges: tuple[HourRange, ...]
    text: str

    @classmethod
    def parse(cls, text: str) -> ServeHours:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise ServeHoursError(f"expected at least one range of hours; {EXAMPLES}")
        if len(parts) > MAX_RANGES:
            raise ServeHoursError(f"expected at most {MAX_RANGES} ranges of hours")
        ranges = []
        for part in parts:
            start, dash, end = part.partition("-")
            if not dash:
                raise ServeHoursError(f"{part.strip()!r:.20} is not a range START-END; {EXAMPLES}")
            a, b = _clock_time(start, text), _clock_time(end, text)
            if a == MINUTES_PER_DAY:
                a = 0  # "24-07" starts at midnight
            if a == b % MINUTES_PER_DAY:
                raise ServeHoursError(
                    f"{part.strip()!r:.20} starts where it "
                    "ends; leave --serve-hours out to serve all day"
                )
            ranges.append(HourRange(a, b))
        return cls(tuple(ranges), ",".join(p.strip() for p in parts))

    def __str__(self) -> str:
        return self.text

    def inside(self, at: dt.datetime) -> bool:
        minute = at.hour * 60 + at.minute + (at.second + at.microsecond / 1e6) / 60
        return any(r.contains(minute) for r in self.ranges)

    def next_change(self, at: dt.datetime) -> dt.datetime | None:
        """The first edge after *at* where `inside` flips; None when it never does (the
        ranges cover the whole day)."""
        now = self.inside(at)
        midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
        edges = sorted(
            midnight + dt.timedelta(days=day, minutes=minute)
            for day in (0, 1, 2)
            for r in self.ranges
            for minute in (r.start, r.end)
        )
        return next((e for e in edges if e > at and self.inside(e) != now), None)
