"""tools/profile_node_threads.py's own parts, fast: it finds the process listening on a port, reads
a busy thread's CPU time from /proc, and says so clearly when nothing listens. The profile of a
real server under load is run by hand (`python tools/profile_node_threads.py --help`)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tools import profile_node_threads as tool


def test_the_listener_of_a_port_is_this_process() -> None:
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))  # bound, never listening: not a server
        assert tool.listening_pid(listening.getsockname()[1]) == os.getpid()
        assert tool.listening_pid(bound.getsockname()[1]) is None


def test_a_busy_thread_s_cpu_time_is_read() -> None:
    tids: list[int] = []
    done, read = threading.Event(), threading.Event()

    def spin() -> None:
        tids.append(threading.get_native_id())
        start = time.thread_time()
        while time.thread_time() - start < 0.3:  # bounded: 0.3 s of this thread's CPU
            pass
        done.set()
        read.wait(timeout=60)  # alive until its times are read

    before = tool.thread_times(os.getpid())
    worker = threading.Thread(target=spin)
    worker.start()
    assert done.wait(timeout=60)
    after = tool.thread_times(os.getpid())
    read.set()
    worker.join(timeout=60)
    tid = tids[0]
    assert tid not in before and tid in after
    assert after[tid][1] >= 0.2
    assert after[os.getpid()][1] >= before[os.getpid()][1]


def test_nothing_listening_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/v1"
        assert tool.main(["--url", url]) == 2
    assert "no process found listening" in capsys.readouterr().err
