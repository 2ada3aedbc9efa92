"""`--serve-hours`: the schedule (pure), and the task that pauses and resumes at its edges (on
trio's MockClock: the wall clock is derived from trio's clock, so no test waits for real)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trio
import trio.testing

from p2p.node.pause import PauseState, follow_serve_hours, publish_changes
from p2p.node.serve_hours import HourRange, ServeHours, ServeHoursError
from p2p.settings import NODE, SettingsError, resolve

DAY = dt.datetime(2026, 3, 14)


def at(hour: int, minute: int = 0, day: int = 0) -> dt.datetime:
    return DAY + dt.timedelta(days=day, hours=hour, minutes=minute)


def test_ranges_across_midnight_and_with_minutes() -> None:
    night = ServeHours.parse("22-07")
    assert night.ranges == (HourRange(22 * 60, 7 * 60),)
    assert [night.inside(at(h)) for h in (21, 22, 23, 0, 6)] == [False, True, True, True, True]
    assert not night.inside(at(7)) and not night.inside(at(12))
    assert night.inside(at(6, 59)) and not night.inside(at(21, 59))
    office = ServeHours.parse("08:30-17:00")
    assert not office.inside(at(8, 29)) and office.inside(at(8, 30)) and office.inside(at(16, 59))
    assert not office.inside(at(17))
    several = ServeHours.parse(" 12-13 , 18-24 ")
    assert str(several) == "12-13,18-24"
    assert several.inside(at(12, 30)) and several.inside(at(23, 59)) and not several.inside(at(0))


def test_next_change_is_the_next_edge_that_flips() -> None:
    night = ServeHours.parse("22-07")
    assert night.next_change(at(12)) == at(22)
    assert night.next_change(at(22)) == at(7, day=1)
    assert night.next_change(at(3)) == at(7)
    # touching ranges are one: no change at 12:00
    joined = ServeHours.parse("08-12,12-17")
    assert joined.next_change(at(9)) == at(17)
    assert ServeHours.parse("00-12,12-24").next_change(at(9)) is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "at least one range"),
        ("22", "not a range"),
        ("25-07", "not a time of day"),
        ("22:75-07", "not a time of day"),
        ("ab-07", "is not a time"),
        ("8:5-9", "is not a time"),
        ("07-07", "starts where it ends"),
        ("00-24", "starts where it ends"),
        (",".join(["1-2"] * 25), "at most 24"),
    ],
)
def test_bad_schedules_are_refused_with_examples(text: str, says: str) -> None:
    with pytest.raises(ServeHoursError, match=says):
        ServeHours.parse(text)


async def test_the_task_pauses_and_resumes_at_the_edges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hours = ServeHours.parse("22-07")
    start = at(21, 30)
    state = PauseState(hours)
    changes: list[tuple[float, bool]] = []

    def now() -> dt.datetime:
        return start + dt.timedelta(seconds=trio.current_time())

    async def watch() -> None:
        seen = state.version
        while len(changes) < 3:
            await state.wait_changed(seen)
            seen = state.version
            changes.append((trio.current_time(), state.paused))

    with trio.fail_after(3 * 86400):  # mock seconds
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_serve_hours, state, hours, now)
            await watch()
            nursery.cancel_scope.cancel()
    # paused at once (21:30 is outside), serving from 22:00, paused again from 07:00
    assert [p for _, p in changes] == [True, False, True]
    assert changes[0][0] == pytest.approx(0, abs=1e-6)
    assert changes[1][0] == pytest.approx(30 * 60, abs=0.1)
    assert changes[2][0] == pytest.approx(30 * 60 + 9 * 3600, abs=0.1)
    assert state.by_schedule and not state.by_owner
    assert state.next_change == at(22, day=1)


async def test_owner_and_schedule_are_separate_reasons() -> None:
    state = PauseState(ServeHours.parse("22-07"))
    state.set_schedule(True)
    state.set_owner(True)
    state.set_owner(False)  # `gpunet resume` outside the hours
    assert state.paused and state.describe()["reasons"] == ["serve_hours"]
    assert "serves only during its hours (22-07" in state.refusal_text()
    state.set_schedule(False)
    assert not state.paused and state.describe()["reasons"] == []


async def test_each_change_is_published_once(autojump_clock: trio.testing.MockClock) -> None:
    state = PauseState()
    published: list[bool] = []
    done = trio.Event()

    async def publish() -> None:
        published.append(state.paused)
        if len(published) == 2:
            done.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_changes, state, publish)
            await trio.testing.wait_all_tasks_blocked()
            state.set_owner(True)
            state.set_owner(True)  # no change: nothing to publish
            await trio.testing.wait_all_tasks_blocked()
            state.set_owner(False)
            await done.wait()
            nursery.cancel_scope.cancel()
    assert published == [True, False]


def test_the_settings_read_serve_hours_and_max_vram_alike_from_everywhere(tmp_path: Path) -> None:
    env = {"GPUNET_DATA_DIR": str(tmp_path), "GPUNET_SERVE_HOURS": "22-07"}
    settings = resolve(NODE, {}, env)
    assert settings["serve_hours"] == ServeHours.parse("22-07")
    assert settings["max_vram"] is None and settings["ctx_size"] is None
    (tmp_path / "config.toml").write_text('[node]\nmax_vram = "6G"\nserve_hours = "8-17"\n')
    settings = resolve(NODE, {}, {"GPUNET_DATA_DIR": str(tmp_path)})
    assert settings["max_vram"] == 6 << 30 and str(settings["serve_hours"]) == "8-17"
    with pytest.raises(SettingsError, match=r"GPUNET_SERVE_HOURS.*'25' is not a time of day"):
        resolve(NODE, {}, {**env, "GPUNET_SERVE_HOURS": "25-07"})
    with pytest.raises(SettingsError, match=r"GPUNET_MAX_VRAM.*a size such as 6G"):
        resolve(NODE, {}, {**env, "GPUNET_MAX_VRAM": "lots"})
