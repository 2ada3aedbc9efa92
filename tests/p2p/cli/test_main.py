"""The `gpunet` group: --version, and a closed stdout (`gpunet peers | head -1`) is no error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from p2p.cli.common import run_trio
from p2p.cli.main import main


def test_version_names_the_llama_cpp_build() -> None:
    pytest.importorskip("llama_cpp")
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("gpunet ")
    assert lines[1].startswith("llama.cpp: llama-cpp-python ")
    assert lines[2].startswith("llama.cpp system info: ")


def test_a_reader_that_left_is_no_error() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` once head has its line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "p2p", "--help"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 1


def test_a_broken_pipe_inside_trio_is_not_turned_into_an_error_line() -> None:
    async def write_to_gone_reader() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        run_trio(write_to_gone_reader, (OSError,))
