"""The run lock: a live writer is refused; a dead or zombie one leaves a stale lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gangaps.config import Config
from gangaps.errors import UserError
from gangaps.experiment.store import RunStore


def _locked_by(tmp_path: Path, pid: int) -> RunStore:
    store = RunStore(tmp_path)
    store.lock_path.write_text(str(pid))
    return store


def test_live_writer_is_refused(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(UserError, match=f"being written by process {proc.pid}"):
            _locked_by(tmp_path, proc.pid).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_a_run_writing_its_first_config_is_named_not_called_foreign(tmp_path: Path) -> None:
    """The instant between a writer's lock and its config.yaml: only the lock and the config's
    temporary file exist. A second run must name the writer, not call the directory foreign."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store = _locked_by(tmp_path, proc.pid)
        (tmp_path / ".config.yaml.k2j4.tmp").write_text("experiment:\n")
        with pytest.raises(UserError, match=f"being written by process {proc.pid}"):
            store.check_config(Config())
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(UserError, match="is not a gangaps run"):  # the writer is gone
        store.check_config(Config())


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie detection reads /proc")
def test_zombie_writer_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z":
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.05)
    try:  # exited but not reaped: kill(pid, 0) still succeeds
        store = _locked_by(tmp_path, proc.pid)
        assert store.running_pid() is None
        store.acquire()
        assert store.lock_path.read_text() == str(os.getpid())
    finally:
        proc.wait()


def test_dead_writer_is_stale(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    store = _locked_by(tmp_path, proc.pid)
    store.acquire()
    store.release()
    assert not store.lock_path.exists()
