"""The killable, recycled child process around the native decoders: `IsolatedDecoder` and `shared_decoder`.

decord's `get_batch` can hang forever in native code (dmlc/decord#269, #373, #375) or crash the process, and its
memory grows over many readers. An `IsolatedDecoder` runs decoding (pipeline.data.decode) in a persistent child
process that is killed on a timeout, replaced after a crash and recycled every `max_clips_per_process` calls; the
failures come back as `DecodeError(reason="timeout" | "crashed")` for the one file, never as the caller's crash.

Why hand-written and not a pool library: measured against pebble and concurrent.futures in docs/data.md ("The
decode child"); what this file owns beyond a pool is the spawn start-up without the parent's __main__
(`_without_parent_main`), a warm child kept between calls, and the idle watcher that stops it between bursts.

The pipe protocol: the child sends ("ready", pid) once started; then per call the parent sends (fn, args, kwargs)
and the child answers ("ok", result) or ("error", DecodeError); None asks the child to exit. `StreamReader.read`
runs on the child's own reader, which keeps online inference's stream open between calls.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.spawn
import os
import tempfile
import threading
import time
from typing import Callable

import numpy as np

from pipeline.data.decode import DecodeError, VideoInfo, decode_frames, probe, short_error
from pipeline.data.stream_reader import StreamReader

log = logging.getLogger(__name__)

# The decode child's kernel process name (/proc/PID/comm; what `ps -o comm` and `top` show): operators (and
# `eco bench pipeline`, which measures their memory) can find the decode processes of a node by it.
CHILD_PROCESS_NAME = "eco-decode"


def _name_process(name: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:  # Linux; elsewhere the name stays "python"
            f.write(name[:15])
    except OSError:
        pass


def native_log_path(parent_pid: int | None = None) -> str:
    """The file the decode children of process `parent_pid` (default: this one) write their native logs to."""
    return os.path.join(tempfile.gettempdir(), f"eco-decode-{os.getuid()}", f"{parent_pid or os.getpid()}.log")


def _redirect_stderr(path: str) -> None:
    """Point this process's fd 2 at `path` (appending): decord's C++ LOG lines (e.g. "video_reader.cc:312: Failed
    to seek file to position: 0") and FFmpeg's messages are written to fd 2 by native code, which no Python
    setting reaches; in a Ray worker fd 2 is forwarded to the driver's console."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as e:
        log.warning("cannot open %s for the decoder's native log (%s); it stays on stderr", path, e)
        return
    os.dup2(fd, 2)
    os.close(fd)


def _serve(conn, native_log: str | None = None) -> None:
    """Child process loop: receive (fn, args, kwargs), send ("ok", result) or ("error", DecodeError)."""
    _name_process(CHILD_PROCESS_NAME)
    if native_log:
        _redirect_stderr(native_log)
    conn.send(("ready", os.getpid()))
    stream = StreamReader()  # the child's stream, open from one call to the next
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, args, kwargs = message
        try:
            reply = ("ok", fn(stream, *args, **kwargs) if fn is StreamReader.read else fn(*args, **kwargs))
        except DecodeError as e:
            reply = ("error", e)
        except Exception as e:  # anything else is reported as a decode failure of this file, not a child crash
            reply = ("error", DecodeError(str(args[0]) if args else "?", "decode_error", short_error(e)))
        conn.send(reply)


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_parent_main():
    """Start spawn/forkserver children without re-running the parent's __main__ module in them.

    multiprocessing makes a spawned child import the parent's main script (as __mp_main__) so that functions
    defined there can be unpickled. In a Ray worker that script is Ray's default_worker.py: the child would import
    all of Ray, costing a second of start-up and ~500 MB of resident memory per decode process. Everything the
    child runs here is importable (pipeline.data.isolation._serve and module-level decode functions), so the main
    module is not needed.
    """
    original = multiprocessing.spawn.get_preparation_data

    def preparation_data(name):
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    multiprocessing.spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        multiprocessing.spawn.get_preparation_data = original


def _ensure_cwd() -> None:
    """Make this process's working directory a directory that exists, before a spawn (which records it).

    Why: Ray runs a job's workers inside its runtime_env `working_dir` package, and a node's runtime-env agent may
    delete and re-extract that package while the workers live (seen when a node joins a machine that shares the
    session directory: the re-extracted copy is a new directory at the same path). A worker whose directory was
    deleted cannot spawn a child (multiprocessing reads os.getcwd()), so every later decode would fail. Go back
    to the same path when it exists again, else to "/" (the decode child uses absolute paths only)."""
    try:
        os.getcwd()
        return
    except FileNotFoundError:
        pass
    try:
        path = os.readlink("/proc/self/cwd").removesuffix(" (deleted)")
    except OSError:
        path = "/"
    target = path if os.path.isdir(path) else "/"
    log.warning("working directory %s was deleted under this process; continuing in %s", path, target)
    os.chdir(target)


class IsolatedDecoder:
    """Decode and probe in a persistent child process that can be killed.

    A call that takes longer than `timeout_s` kills the child and raises DecodeError(reason="timeout"); a child
    that dies (segfault, os._exit, OOM kill) raises DecodeError(reason="crashed"); the next call starts a fresh
    child transparently. The child is replaced every `max_clips_per_process` calls to bound decord's memory growth.
    `decode_fn` / `probe_fn` replace decode_frames / probe in the child (module-level functions, pickled by
    reference: tests inject hanging or crashing ones, see tests/faults.py).
    The child's stderr (fd 2: decord's and FFmpeg's native log lines) goes to `native_log` (default:
    native_log_path(), one file per parent process), never to the console.
    The child is started with `start_method` ("spawn" or "forkserver"): forking a process that runs Ray or torch
    threads is unsafe. One call at a time (calls are serialised by a lock). With `idle_timeout_s`, a child that
    has had no call for that long is stopped (by a timer thread) and the next call starts a new one: a process
    that keeps a decoder between bursts of work (see `shared_decoder`) does not hold an idle child forever.
    """

    def __init__(
        self,
        timeout_s: float = 60.0,
        max_clips_per_process: int = 2000,
        decode_fn: Callable[..., np.ndarray] | None = None,
        probe_fn: Callable[..., VideoInfo] | None = None,
        *,
        start_method: str = "spawn",
        start_timeout_s: float = 120.0,
        idle_timeout_s: float | None = None,
        native_log: str | None = "",
    ) -> None:
        if timeout_s <= 0 or max_clips_per_process < 1:
            raise ValueError(f"need timeout_s > 0 and max_clips_per_process >= 1, got {timeout_s}, "
                             f"{max_clips_per_process}")
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {idle_timeout_s}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe), got {start_method!r}")
        self.timeout_s = float(timeout_s)
        self.max_clips_per_process = int(max_clips_per_process)
        self.decode_fn = decode_fn or decode_frames
        self.probe_fn = probe_fn or probe
        self.start_timeout_s = float(start_timeout_s)
        # "" (default): native_log_path(); None: the child keeps this process's stderr.
        self.native_log = native_log_path() if native_log == "" else native_log
        self.idle_timeout_s = None if idle_timeout_s is None else float(idle_timeout_s)
        # One watcher thread per decoder while a child runs (not a timer per call: calls are per clip).
        self._idle_watcher: threading.Thread | None = None
        self._closed = threading.Event()
        self._last_call = time.monotonic()
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self._calls_in_process = 0
        self.processes_started = 0

    # -- public -----------------------------------------------------------------------------------------------
    def decode(self, path: str, indices, **kwargs) -> np.ndarray:
        """decode_frames(path, indices, **kwargs) in the child; same result, same DecodeError reasons + timeout/crashed."""
        return self._call(path, self.decode_fn, (str(path), np.asarray(indices, dtype=np.int64)), kwargs)

    def probe(self, path: str, **kwargs) -> VideoInfo:
        """probe(path, **kwargs) in the child."""
        return self._call(path, self.probe_fn, (str(path),), kwargs)

    def stream_chunk(self, path: str, start: int, count: int, **kwargs) -> np.ndarray:
        """StreamReader.read(path, start, count, **kwargs) on the child's reader (which keeps the stream open)."""
        return self._call(path, StreamReader.read, (str(path), int(start), int(count)), kwargs)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before the first call or after close)."""
        return self._process.pid if self._process is not None else None

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        with self._lock:
            self._closed.set()  # wakes the idle watcher, which then finds no child and exits
            self._stop()

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._stop()
        except Exception:
            pass

    def __getstate__(self):
        raise TypeError("IsolatedDecoder owns a process; create one per worker instead of pickling it")

    # -- internals --------------------------------------------------------------------------------------------
    def _call(self, path: str, fn: Callable, args: tuple, kwargs: dict):
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._stop()
                self._start()
            try:
                self._conn.send((fn, args, kwargs))
            except (BrokenPipeError, OSError) as e:
                code = self._kill()
                raise DecodeError(path, "crashed", f"decode process gone before the call (exit code {code})") from e
            if not self._conn.poll(self.timeout_s):
                self._kill()
                raise DecodeError(path, "timeout", f"no result within {self.timeout_s:g}s; decode process killed")
            try:
                status, payload = self._conn.recv()
            except (EOFError, OSError) as e:
                code = self._kill()
                raise DecodeError(path, "crashed", f"decode process died (exit code {code})") from e
            self._calls_in_process += 1
            if self._calls_in_process >= self.max_clips_per_process:
                self._stop()
            self._last_call = time.monotonic()
            self._watch_idle()
        if status == "error":
            raise payload
        return payload

    def _watch_idle(self) -> None:
        """Start the idle watcher if a child runs and none watches it (called with the lock held)."""
        if self.idle_timeout_s is None or self._process is None:
            return
        if self._idle_watcher is None or not self._idle_watcher.is_alive():
            self._idle_watcher = threading.Thread(target=self._stop_when_idle, name="eco-decode-idle", daemon=True)
            self._idle_watcher.start()

    def _stop_when_idle(self) -> None:
        # Re-checks under the lock after every wake-up: a close() wakes it (no child: exit), and a child started
        # again right after a close() is watched by this same thread.
        while True:
            with self._lock:
                self._closed.clear()
                if self._process is None:
                    return
                remaining = self._last_call + self.idle_timeout_s - time.monotonic()
                if remaining <= 0:
                    log.debug("decode process %d idle for %.0fs: stopping it", self._process.pid, self.idle_timeout_s)
                    self._stop()
                    return
            self._closed.wait(remaining)

    def _start(self) -> None:
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_serve, args=(child, self.native_log), name="eco-decode",
                                        daemon=True)
        with _START_LOCK, _without_parent_main():
            _ensure_cwd()
            process.start()
        child.close()
        if not parent.poll(self.start_timeout_s):
            process.kill()
            process.join()
            raise RuntimeError(f"decode process did not start within {self.start_timeout_s:g}s")
        try:
            parent.recv()
        except (EOFError, OSError) as e:
            process.join()
            raise RuntimeError(f"decode process exited while starting (exit code {process.exitcode})") from e
        self._process, self._conn = process, parent
        self._calls_in_process = 0
        self.processes_started += 1
        log.debug("decode process %d started", process.pid)

    def _kill(self) -> int | None:
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join()
        return process.exitcode

    def _stop(self) -> None:
        process = self._process
        if process is not None and process.is_alive() and self._conn is not None:
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=5)
        self._kill()


# How long a process-shared decoder keeps an idle child. Longer than the gap between two training epochs
# (validation, checkpoint) on most runs, so a training job decodes every epoch with the children it already has.
SHARED_IDLE_TIMEOUT_S = 600.0
_SHARED: dict[tuple, IsolatedDecoder] = {}
_SHARED_LOCK = threading.Lock()
_SHARED_MAX = 2


def shared_decoder(*, timeout_s: float, max_clips_per_process: int, decode_fn: Callable | None = None,
                   idle_timeout_s: float = SHARED_IDLE_TIMEOUT_S) -> IsolatedDecoder:
    """This process's IsolatedDecoder for these settings, created on first use and kept for the process's life.

    Why: Ray Data runs the decode stage as tasks on Ray's reusable worker processes (pipeline.data.pipeline), so
    a decoder kept here outlives the task, the epoch and the dataset execution: the child starts once per worker
    process, not once per epoch. An idle child is
    stopped after `idle_timeout_s`; at most _SHARED_MAX settings are kept (the oldest is closed), so a process
    never holds more than two children.
    """
    key = (float(timeout_s), int(max_clips_per_process), decode_fn)
    with _SHARED_LOCK:
        decoder = _SHARED.get(key)
        if decoder is None:
            while len(_SHARED) >= _SHARED_MAX:
                _SHARED.pop(next(iter(_SHARED))).close()
            decoder = _SHARED[key] = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=max_clips_per_process,
                                                     decode_fn=decode_fn, idle_timeout_s=idle_timeout_s)
        return decoder

