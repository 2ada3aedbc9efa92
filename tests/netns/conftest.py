"""Fixtures of the network-namespace tests: a lab per test (removed at the end, also on failure),
skipped with a one-line reason where namespaces cannot be built (not root, tools missing), and
the NAT matrix's table in the terminal summary."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.netns.lab import NAT_KINDS, Lab, open_lab, unavailable_reason
from tests.netns.lab_gpunet import child_env

__all__ = ["PYTHON", "child_env"]

PYTHON = sys.executable
# Filled by tests/netns/test_nat_matrix.py: the lines of its table, printed after the run.
MATRIX_TABLE: list[str] = []


def skip_without_lab() -> None:
    reason = unavailable_reason(NAT_KINDS)
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    skip_without_lab()
    with open_lab(tmp_path) as built:
        yield built


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MATRIX_TABLE:
        terminalreporter.section("NAT matrix: which pairs were served, and how")
        for line in MATRIX_TABLE:
            terminalreporter.write_line(line)
