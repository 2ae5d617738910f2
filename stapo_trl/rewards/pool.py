"""Grading worker processes: bounded time from any thread.

math-verify bounds its own work with ``signal.alarm``, which only works in the main thread of the main
interpreter; TRL may compute rewards off the main thread and an evaluation harness may grade from a
thread pool. Signals also cannot interrupt long C-level work (a huge big-integer power, for example),
and sympy can blow up on short inputs such as ``9^{9^{9^{9^{9}}}}`` or deeply nested ``{{{...}}}``.
So the sympy work runs in a small pool of **worker processes** (``backend="process"``, the default):

* each worker is a plain ``python -c`` subprocess (no ``fork`` of the training process, no re-import
  of the user's ``__main__``) that loads ``verify.py`` by its path and answers JSON-line requests on a pipe;
* inside the worker (its main thread) one ``setitimer`` budget bounds the whole parse + verify of a
  request (math-verify's own per-call alarms are disabled), so ordinary blow-ups end as ``"timeout"``;
* the caller waits on the pipe with a hard deadline (budget + grace); a worker stuck in C code past it
  is killed and replaced on the next call. A memory limit (``RLIMIT_AS``) in the worker turns runaway
  allocations into ``MemoryError`` instead of endangering the trainer;
* inputs are bounded before any parsing (answer length and brace depth), which rejects most
  pathological answers in microseconds.

The normal case costs one pipe round trip (tens of microseconds) on top of math-verify itself, gold
answers are parsed once per worker (cached), and :func:`grade_batch` spreads a batch over the workers.
If a worker process cannot be started, grading falls back to ``backend="inline"`` (same code, in
process) with a warning: there, math-verify's signal timeouts are used on the main thread, and off the
main thread only the input bounds apply.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time

from .settings import grader_settings

#: Address-space limit of a worker process; runaway sympy allocations fail with MemoryError instead.
WORKER_MEMORY_LIMIT_BYTES: int = 4 << 30


#: Seconds a new worker may take to import math-verify and report ready.
WORKER_STARTUP_TIMEOUT_S: float = 120.0


#: A worker is replaced after this many requests (bounds any slow growth of sympy caches).
WORKER_MAX_REQUESTS: int = 100_000


# The worker runs `verify.py` loaded by its path: no import of the package (or of TRL) and no re-import of the
# caller's `__main__`, which a multiprocessing start would do.
_WORKER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify.py")
_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_stapo_grading_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._worker_main(int(sys.argv[2]))\n"
)


class WorkerError(Exception):
    """The worker could not be started, could not be reached, or died."""


class WorkerTimeout(WorkerError):
    """The worker missed its hard deadline (stuck where its own time budget could not stop it)."""


class _Worker:
    """One grading subprocess and its pipes; used by one thread at a time."""

    def __init__(self) -> None:
        if not sys.executable:
            raise WorkerError("sys.executable is not set")
        self.requests = 0
        self._next_id = 0
        self._buffer = b""
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _WORKER_FILE, str(WORKER_MEMORY_LIMIT_BYTES)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            raise WorkerError(f"cannot start a grading worker: {exc}") from exc
        try:
            self._read_line(time.monotonic() + WORKER_STARTUP_TIMEOUT_S)
        except WorkerError:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_line(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout("deadline exceeded")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise WorkerError("worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def grade(self, answer: str, gold_latex: str, timeout_s: float) -> str:
        self._next_id += 1
        self.requests += 1
        request_id = self._next_id
        payload = {"id": request_id, "answer": answer, "gold": gold_latex, "timeout": timeout_s}
        try:
            self.proc.stdin.write(json.dumps(payload).encode("ascii") + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise WorkerError(f"cannot send to the grading worker: {exc}") from exc
        # Hard deadline: the worker's own budget plus a grace period for IPC and scheduling noise.
        deadline = time.monotonic() + timeout_s + 1.0 + 0.5 * timeout_s
        while True:
            reply = json.loads(self._read_line(deadline))
            if reply.get("id") in (request_id, None):
                return str(reply.get("status", "error"))

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            pass

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # the worker exits on EOF
            self.proc.wait(timeout=2)
        except Exception:
            pass
        if self.alive():
            self.kill()
        else:
            try:
                self.proc.stdout.close()
            except OSError:
                pass


class _WorkerPool:
    """Up to ``max_workers`` lazily started workers shared by all threads of this process."""

    def __init__(self, max_workers: int) -> None:
        self.pid = os.getpid()
        self.max_workers = max(1, max_workers)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self.broken = False

    def grade(self, answer: str, gold_latex: str, timeout_s: float) -> str:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker.alive() or worker.requests >= WORKER_MAX_REQUESTS:
                if worker is not None:
                    self._discard(worker, graceful=True)
                worker = _Worker()  # may raise WorkerError: the caller falls back to inline grading
                with self._lock:
                    self._all.append(worker)
            try:
                status = worker.grade(answer, gold_latex, timeout_s)
            except WorkerError as exc:
                # Stuck past the hard deadline, or dead: kill it; the next call starts a fresh one.
                self._discard(worker, graceful=False)
                return "timeout" if isinstance(exc, WorkerTimeout) else "error"
            except Exception:
                self._discard(worker, graceful=False)
                return "error"
            with self._lock:
                self._idle.append(worker)
            return status

    def _discard(self, worker: _Worker, graceful: bool) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        if graceful:
            worker.close()
        else:
            worker.kill()

    def shutdown(self) -> None:
        with self._lock:
            workers, self._all, self._idle = self._all, [], []
        for worker in workers:
            worker.close()


_pool_lock = threading.Lock()


_pool: _WorkerPool | None = None


def get_pool() -> _WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            # A forked child must not share its parent's workers: start its own.
            _pool = _WorkerPool(grader_settings.max_workers)
        return _pool


def pool_broken() -> bool:
    """Whether this process's workers could not be started (grading then runs in process)."""
    return _pool is not None and _pool.broken


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shutdown_grader() -> None:
    """Stop this process's grading workers (they are restarted on demand). Registered with ``atexit``."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown()


atexit.register(shutdown_grader)
