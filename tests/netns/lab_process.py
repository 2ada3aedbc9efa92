"""A child process of the network-namespace lab: stdout lines read on a thread (so the child
never blocks on a full pipe, and a test can wait for a line with a deadline), stderr to a log
file, stopped with SIGINT and killed (its whole process group) when it does not stop in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class LabProcess:
    def __init__(
        self,
        cmd: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        stop_timeout_s: float = 20.0,
        merge_stderr: bool = False,
    ) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else self._log,
            env=env,
            cwd=ROOT,  # children run `python -m tests.netns...` and `.venv/bin/gpunet`
            start_new_session=True,  # its own process group: killed as one at the end
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put("\0")  # end of output

    def next_line(self, timeout: float) -> str | None:
        """The next stdout line, or None at the end of output; TimeoutError past *timeout*."""
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"no output from {self.cmd[3:6]} in {timeout:g} s") from None
        if line == "\0":
            self.lines.put(line)  # stays at the end for later readers
            return None
        self.seen.append(line)
        return line

    def wait_line(self, match: Callable[[str], bool], timeout: float) -> str:
        """The first stdout line for which *match* is true; RuntimeError if the process ends or
        *timeout* passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.next_line(deadline - time.monotonic())
            except TimeoutError:
                raise RuntimeError(self.why(f"no matching line in {timeout:g} s")) from None
            if line is None:
                raise RuntimeError(self.why("it ended before the expected line"))
            if match(line):
                return line

    def wait_json(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first JSON object line for which *match* is true; RuntimeError with the log's tail
        if the process ends or *timeout* passes first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.next_line(left)
            except TimeoutError:
                raise RuntimeError(self.why(f"no matching line in {timeout:g} s")) from None
            if line is None:
                raise RuntimeError(self.why("it ended before the expected line"))
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and match(data):
                    return data

    def why(self, what: str) -> str:
        seen = "\n".join(self.seen[-30:])
        return f"{' '.join(self.cmd[3:7])}...: {what}; output:\n{seen}\nlog:\n{self.log_tail()}"

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def send_line(self, text: str) -> None:
        """Write one line to its stdin (a command for a child that reads them)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        """Stop it (SIGINT, then SIGKILL to its group past the stop timeout); its exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=self.stop_timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left running
        code = self.proc.wait(timeout=10)
        self.close_stdin()
        self._log.close()
        return code
