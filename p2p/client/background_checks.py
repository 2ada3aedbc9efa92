"""Spot checks of a fraction of a long-lived client's requests, run in the background.

The gateway hands every finished request's segments to `offer`; a `fraction` of them is checked
(p2p/client/spot_check.py) in a task of its own, after the answer went out, so a check never
delays a user. A node whose summed evidence leans towards cheating is checked more often
(`fraction_for`). At most `max_running` checks run at once: an offer beyond that is skipped, not
queued (a check is a sample; a burst of requests must not pile up work or memory). Outcomes go
into the reputation (which the ranking reads) and, for failures, evidence files in the data dir.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import trio

from p2p.client.check_ledger import LEAN_BOOST
from p2p.client.network import Client
from p2p.client.reputation import Reputation
from p2p.client.segments import Segment
from p2p.client.spot_check import CheckResult, check_request

log = logging.getLogger(__name__)

MAX_RUNNING = 2
# A check is one Score request per segment; past this it is abandoned (the verifier stalled).
CHECK_DEADLINE_S = 180.0
RECENT = 16  # results kept for logs and the dashboard


class BackgroundChecks:
    @classmethod
    def of_settings(
        cls, client: Client, fraction: float, data_dir: Path | None
    ) -> BackgroundChecks | None:
        """The checks a command's `verify_fraction` asks for (None for 0), its reputation and
        evidence in *data_dir*."""
        if fraction <= 0:
            return None
        reputation = Reputation.load(data_dir) if data_dir is not None else Reputation()
        return cls(client, fraction, reputation, data_dir)

    def __init__(
        self,
        client: Client,
        fraction: float,
        reputation: Reputation,
        data_dir: Path | None,
        *,
        max_running: int = MAX_RUNNING,
        rng: random.Random | None = None,
    ) -> None:
        self.client, self.fraction, self.reputation = client, fraction, reputation
        self.data_dir, self.max_running = data_dir, max_running
        self.rng = rng or random.Random()
        self._nursery: trio.Nursery | None = None
        self.running = 0
        # Counters for logs, the dashboard and tests.
        self.offered = self.started = self.skipped = 0
        self.verdicts: dict[str, int] = {}
        self.recent: deque[CheckResult] = deque(maxlen=RECENT)
        self.idle = trio.Event()  # set whenever no check is running
        self.idle.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the checks until cancelled (`nursery.start(checks.run)`)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def offer(self, segments: Sequence[Segment]) -> bool:
        """Maybe check *segments* (one finished request); whether a check was started."""
        self.offered += 1
        if not segments or self._nursery is None:
            return False
        if self.rng.random() >= self.fraction_for(segments):
            return False
        if self.running >= self.max_running:
            self.skipped += 1
            return False
        self.running += 1
        self.started += 1
        self.idle = trio.Event()
        self._nursery.start_soon(self._check, tuple(segments))
        return True

    def fraction_for(self, segments: Sequence[Segment]) -> float:
        """The chance a request with these segments is checked: `fraction`, or LEAN_BOOST times
        it (at most 1) when the ledger of a node that served a part leans towards cheating
        (check_ledger.py `leaning`), so that evidence adding up is completed sooner."""
        for s in segments:
            if self.reputation.get(s.peer_id, s.model_sha256).ledger.leaning():
                return min(1.0, self.fraction * LEAN_BOOST)
        return self.fraction

    async def _check(self, segments: tuple[Segment, ...]) -> None:
        try:
            with trio.move_on_after(CHECK_DEADLINE_S):
                results = await check_request(
                    self.client, segments, reputation=self.reputation, data_dir=self.data_dir
                )
                for r in results:
                    self.recent.append(r)
                    self.verdicts[r.verdict] = self.verdicts.get(r.verdict, 0) + 1
                    if r.verdict == "inconsistent":
                        log.warning(
                            "spot check: %s is inconsistent with model %s: %s (evidence: %s)",
                            r.peer_id[:12],
                            r.model_sha256[:12],
                            r.reason,
                            r.evidence,
                        )
        except Exception:  # a check's bug must not take the gateway down
            log.exception("spot check failed")
        finally:
            self.running -= 1
            if self.running == 0:
                self.idle.set()
