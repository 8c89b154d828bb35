"""Injectable faulty decode/probe functions for IsolatedDecoder (module-level, so they pickle by reference).

The decode process runs them instead of decode_frames/probe. `faulty_decode`/`faulty_probe` misbehave only for
files whose name contains a marker, so a pipeline test can mix good and bad files:
  "HANG"  -> blocks forever (like decord get_batch in dmlc/decord#269, #373, #375)
  "CRASH" -> the process dies with SIGSEGV (a native crash)
  "EXIT"  -> the process exits with os._exit(3)
Import them as `tests.faults` (the repository root is on sys.path for pytest, spawned children and Ray workers).
"""

from __future__ import annotations

import os
import signal
import time

from pipeline.data.decode import decode_frames, probe


def hang(*args, **kwargs):
    time.sleep(3600)


def segfault(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)  # the signal is delivered asynchronously


def exit_abruptly(*args, **kwargs):
    os._exit(3)


def _misbehave(path: str) -> None:
    name = os.path.basename(str(path))
    if "HANG" in name:
        hang()
    if "CRASH" in name:
        segfault()
    if "EXIT" in name:
        exit_abruptly()


def faulty_decode(path, indices, **kwargs):
    _misbehave(path)
    return decode_frames(path, indices, **kwargs)


def faulty_probe(path, **kwargs):
    _misbehave(path)
    return probe(path, **kwargs)
