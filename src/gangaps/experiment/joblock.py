"""A per-job lock: one process trains a job at a time, wherever drivers and workers run.

`fcntl.flock` on a file beside the job's outputs, held for the job's duration. The kernel drops
it when the holder dies (a SIGKILLed Ray worker included), so a retry or a new driver takes the
job over at once and resumes it from its checkpoint. On a shared filesystem the lock is seen by
every node (NFS v4 and Lustre support flock; a filesystem mounted without locks does not). While
held, the file names its holder (host, pid, start time), which `gangaps status` shows; it is
removed when the job ends (one left behind by a killed holder is unlocked, hence stale).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gangaps.errors import UserError


@contextmanager
def job_lock(path: Path, job: str, wait: bool = False) -> Iterator[None]:
    """Hold `path` exclusively; if another process holds it, raise UserError (or wait).
    The file exists only while held (or after its holder was killed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 2  # ride out a `status` reader's brief shared lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                h = lock_holder(path) or {}
                raise UserError(f"{job} is being run by pid {h.get('pid', '?')} on "
                                f"{h.get('host', '?')}; two drivers must not share a run") from None
            time.sleep(0.1)
            continue
        try:  # the previous holder may have removed the file we locked: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"job": job, "host": socket.gethostname(), "pid": os.getpid(),
                                 "start": time.time()}).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held, so nobody holds this file after us
        os.close(fd)  # releases the flock


def lock_holder(path: Path) -> dict | None:
    """Who holds the lock now (its host, pid, start), or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # free: whatever the file says is from a holder that died
        except BlockingIOError:
            pass
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}  # the holder is writing its name right now
    finally:
        os.close(fd)
