"""Rule-based grading of boxed math answers and the STAPO reward functions.

This module holds the single grading function of the project: the training reward (``boxed_reward``,
the paper's binary +1/-1 reward) and the evaluation harness both call :func:`grade`, so an answer that
earns a reward during training is graded the same way at evaluation time.

Grading pipeline for one ``(completion, gold)`` pair:

1. :func:`completion_text` turns a TRL completion (plain string or list of chat messages) into text.
2. :func:`extract_boxed_answer` takes the content of the last complete ``\\boxed{...}`` (a linear-time
   brace matcher, safe on megabyte-long or deeply nested input).
3. The gold answer is wrapped as ``\\boxed{gold}`` and both are parsed and compared with
   `math-verify <https://github.com/huggingface/Math-Verify>`_ (``math_verify.parse`` then
   ``math_verify.verify``).

Bounded time from any thread
----------------------------
math-verify bounds its own work with ``signal.alarm``, which only works in the main thread of the main
interpreter; TRL may compute rewards off the main thread and an evaluation harness may grade from a
thread pool. Signals also cannot interrupt long C-level work (a huge big-integer power, for example),
and sympy can blow up on short inputs such as ``9^{9^{9^{9^{9}}}}`` or deeply nested ``{{{...}}}``.
So the sympy work runs in a small pool of **worker processes** (``backend="process"``, the default):

* each worker is a plain ``python -c`` subprocess (no ``fork`` of the training process, no re-import
  of the user's ``__main__``) that loads this very file and answers JSON-line requests on a pipe;
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

Problem counters
----------------
Every graded pair is tallied in a thread-safe, process-local counter; :func:`reward_problem_counts`
returns (and by default resets) the counts, so a trainer can log them as metrics.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "GradingWarning",
    "MAX_ANSWER_CHARS",
    "MAX_BRACE_DEPTH",
    "MAX_GOLD_CHARS",
    "PROBLEM_KEYS",
    "accuracy_reward",
    "boxed_reward",
    "completion_text",
    "configure_grader",
    "extract_boxed_answer",
    "grade",
    "grade_batch",
    "grade_with_status",
    "reward_problem_counts",
    "shutdown_grader",
]

# --------------------------------------------------------------------------------------------------
# Limits and settings
# --------------------------------------------------------------------------------------------------

#: Time budget (seconds) for parsing and verifying one answer. Environment: ``STAPO_GRADER_TIMEOUT``.
DEFAULT_TIMEOUT_S: float = 3.0
#: Boxed answers longer than this are scored wrong without parsing (status ``"too_complex"``).
MAX_ANSWER_CHARS: int = 1000
#: Boxed answers nesting braces deeper than this are scored wrong without parsing (``"too_complex"``).
#: Real answers stay far below it; bare nested braces make math-verify's parser exponential.
MAX_BRACE_DEPTH: int = 20
#: Gold answers longer than this are treated as unparseable.
MAX_GOLD_CHARS: int = 2000
#: Address-space limit of a worker process; runaway sympy allocations fail with MemoryError instead.
WORKER_MEMORY_LIMIT_BYTES: int = 4 << 30
#: Seconds a new worker may take to import math-verify and report ready.
WORKER_STARTUP_TIMEOUT_S: float = 120.0
#: A worker is replaced after this many requests (bounds any slow growth of sympy caches).
WORKER_MAX_REQUESTS: int = 100_000

#: Keys of :func:`reward_problem_counts` besides ``"graded"`` (the number of graded pairs).
#: ``no_box``: no complete ``\\boxed{}`` in the completion; ``too_complex``: boxed answer over the size
#: or nesting bounds; ``unparseable_gold``: gold answer empty or not parseable by math-verify;
#: ``timeout``: the time budget ran out; ``error``: any other failure (parser exception, dead worker).
PROBLEM_KEYS: tuple[str, ...] = ("no_box", "too_complex", "unparseable_gold", "timeout", "error")

_CORRECT = "correct"
_WRONG = "wrong"


class GradingWarning(UserWarning):
    """Warning about a grading problem that deserves a look (unparseable gold, grader fallback)."""


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default


class _Settings:
    """Process-wide grader settings; change them with :func:`configure_grader`."""

    def __init__(self) -> None:
        backend = os.environ.get("STAPO_GRADER_BACKEND", "process").strip().lower()
        self.backend: str = backend if backend in ("process", "inline") else "process"
        self.timeout_s: float = _env_float("STAPO_GRADER_TIMEOUT", DEFAULT_TIMEOUT_S)
        self.max_workers: int = _env_int("STAPO_GRADER_WORKERS", min(4, os.cpu_count() or 1))


_settings = _Settings()

# --------------------------------------------------------------------------------------------------
# Problem counters and one-time warnings
# --------------------------------------------------------------------------------------------------

_counts_lock = threading.Lock()
_counts: dict[str, int] = dict.fromkeys(("graded", *PROBLEM_KEYS), 0)

_warned_lock = threading.Lock()
_warned_golds: set[str] = set()
_MAX_WARNED_GOLDS = 10_000


def _record(status: str) -> None:
    with _counts_lock:
        _counts["graded"] += 1
        if status in _counts:
            _counts[status] += 1


def reward_problem_counts(reset: bool = True) -> dict[str, int]:
    """Return the tally of grading problems since the last reset, for logging as metrics.

    The tally is process-local and thread-safe. Keys: ``"graded"`` (pairs graded) and every entry of
    :data:`PROBLEM_KEYS` (``"no_box"``, ``"too_complex"``, ``"unparseable_gold"``, ``"timeout"``,
    ``"error"``); each problem pair counts under exactly one key and is scored wrong.

    Args:
        reset: Zero the counters after reading them (default), so each call reports a fresh window.

    Returns:
        A new dict mapping each key to its count.
    """
    with _counts_lock:
        snapshot = dict(_counts)
        if reset:
            for key in _counts:
                _counts[key] = 0
    return snapshot


def _warn_unparseable_gold(gold: Any) -> None:
    key = repr(gold)[:300]
    with _warned_lock:
        if key in _warned_golds or len(_warned_golds) >= _MAX_WARNED_GOLDS:
            return
        _warned_golds.add(key)
    message = (
        f"Gold answer {key} cannot be parsed by math-verify; every completion for it is scored as wrong. "
        "Check the dataset's answer column (this warning is shown once per distinct gold answer)."
    )
    warnings.warn(message, GradingWarning, stacklevel=2)


# --------------------------------------------------------------------------------------------------
# Text handling (pure Python, linear time)
# --------------------------------------------------------------------------------------------------

_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Tokens that matter for brace matching: a box opener, an escaped brace (literal, ignored), a brace.
_BRACE_TOKEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[{}]|[{}]")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, (list, tuple)):
        return "".join(_content_text(part) for part in content)
    return ""


def completion_text(completion: Any) -> str:
    """Return the text of a TRL completion.

    Args:
        completion: A plain string (standard format), a list of chat messages (conversational format,
            e.g. ``[{"role": "assistant", "content": "..."}]``) or a single message dict. The text of the
            last ``assistant`` message is used (the last message if none has that role); its content
            may be a string or a list of parts such as ``{"type": "text", "text": "..."}``.

    Returns:
        The text, or ``""`` for anything else (``None``, numbers, unknown structures). Never raises.
    """
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            return _content_text(completion.get("content"))
        if isinstance(completion, (list, tuple)):
            messages = [m for m in completion if isinstance(m, dict)]
            if not messages:
                return "".join(m for m in completion if isinstance(m, str))
            assistant = [m for m in messages if m.get("role") == "assistant"]
            return _content_text((assistant or messages)[-1].get("content"))
    except Exception:  # pragma: no cover - defensive: odd mappings with failing .get()
        logger.debug("Could not read completion text", exc_info=True)
    return ""


def extract_boxed_answer(text: str) -> str | None:
    """Return the content of the last complete ``\\boxed{...}`` in ``text``.

    ``\\boxed {...}`` (space before the brace) and ``\\fbox{...}`` count as boxes too. Braces are matched
    with nesting (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); escaped braces ``\\{``/``\\}`` are
    literal characters. "Last" means the box that starts last among the boxes that are closed, so for
    nested boxes the inner one wins and an unclosed trailing ``\\boxed{`` (a truncated completion) is
    skipped in favour of the last closed one. Runs in linear time in the length of ``text``.

    Args:
        text: Completion text.

    Returns:
        The box content with surrounding whitespace stripped (possibly ``""`` for ``\\boxed{}``), or
        ``None`` when there is no complete box or ``text`` is not a string.
    """
    if not isinstance(text, str):
        return None
    first = _BOX_OPEN_RE.search(text)
    if first is None:
        return None
    # Stack of open braces: (box_start, content_start) for a box opener, None for a plain brace.
    stack: list[tuple[int, int] | None] = []
    best: tuple[int, int, int] | None = None  # (box_start, content_start, content_end)
    for match in _BRACE_TOKEN_RE.finditer(text, first.start()):
        token = match.group()
        if token == "}":
            if stack:
                opened = stack.pop()
                if opened is not None and (best is None or opened[0] > best[0]):
                    best = (opened[0], opened[1], match.start())
        elif token == "{":
            stack.append(None)
        elif len(token) > 2:  # a box opener
            stack.append((match.start(), match.end()))
        # else: an escaped brace (\{ or \}), literal text
    if best is None:
        return None
    return text[best[1] : best[2]].strip()


def _max_brace_depth(text: str) -> int:
    depth = deepest = 0
    for match in _BRACE_TOKEN_RE.finditer(text):
        token = match.group()
        if token == "}":
            depth = max(depth - 1, 0)
        elif token == "{" or len(token) > 2:  # a plain brace or a box opener (escaped braces: len 2)
            depth += 1
            deepest = max(deepest, depth)
    return deepest


_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _gold_to_latex(gold: Any) -> str | None:
    """Normalise a gold answer into ``\\boxed{...}`` LaTeX for math-verify; ``None`` when unusable."""
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, float):
        if not math.isfinite(gold):
            return None
        if gold.is_integer():
            gold = int(gold)
    if isinstance(gold, (list, tuple)):
        gold = ", ".join(str(g) for g in gold)
    text = str(gold).strip()
    for left, right in _MATH_DELIMITERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            text = text[len(left) : -len(right)].strip()
            break
    if _BOX_OPEN_RE.search(text):
        inner = extract_boxed_answer(text)
        if inner is not None:
            text = inner
    if not text or len(text) > MAX_GOLD_CHARS:
        return None
    return "\\boxed{" + text + "}"


# --------------------------------------------------------------------------------------------------
# The math-verify part (runs in a worker process, or inline as a fallback)
# --------------------------------------------------------------------------------------------------

_extraction_config: list[Any] | None = None


def _math_verify_config() -> list[Any]:
    global _extraction_config
    if _extraction_config is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig

        _extraction_config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return _extraction_config


@lru_cache(maxsize=4096)
def _parse_gold(gold_latex: str, mv_timeout: int | None) -> tuple[Any, ...]:
    from math_verify import parse

    return tuple(parse(gold_latex, extraction_config=_math_verify_config(), parsing_timeout=mv_timeout))


def _grade_core(answer: str, gold_latex: str, mv_timeout: int | None) -> str:
    """Parse and verify; returns a status. May raise (callers map exceptions to statuses)."""
    from math_verify import parse, verify

    gold = _parse_gold(gold_latex, mv_timeout)
    if not gold:
        return "unparseable_gold"
    pred = parse(
        "\\boxed{" + answer + "}", extraction_config=_math_verify_config(), parsing_timeout=mv_timeout
    )
    if not pred:
        return _WRONG
    return _CORRECT if verify(list(gold), pred, timeout_seconds=mv_timeout) else _WRONG


def _mute_timeout_disabled_warning() -> None:
    # math-verify warns once that "timeout is disabled" when called without its signal timeouts; here
    # that is deliberate (the worker bounds time itself, or we are off the main thread).
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True


def _silence_math_verify_logs() -> None:
    """Worker only: math-verify also logs whole inputs on failures; keep them out of training logs."""
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _grade_inline(answer: str, gold_latex: str, timeout_s: float) -> str:
    """In-process grading: math-verify's signal timeouts on the main thread, input bounds elsewhere."""
    try:
        _mute_timeout_disabled_warning()
    except Exception:  # pragma: no cover - other math-verify versions
        pass
    on_main = threading.current_thread() is threading.main_thread()
    mv_timeout = max(1, math.ceil(timeout_s)) if on_main else None
    try:
        return _grade_core(answer, gold_latex, mv_timeout)
    except (RecursionError, MemoryError):
        return "error"
    except Exception:
        logger.debug("math-verify failed", exc_info=True)
        return "error"
    except BaseException as exc:  # math-verify's TimeoutException derives from BaseException
        if type(exc).__name__ == "TimeoutException":
            return "timeout"
        raise


class _BudgetExceeded(BaseException):
    """Raised by the worker's SIGALRM handler; a BaseException so math-verify cannot swallow it."""


_budget_armed = False


def _on_budget_alarm(signum: int, frame: Any) -> None:
    if _budget_armed:
        raise _BudgetExceeded()


def _grade_in_worker(answer: str, gold_latex: str, timeout_s: float) -> str:
    """Grade under one wall-clock budget (``setitimer``); runs in a worker's main thread."""
    global _budget_armed
    try:
        try:
            _budget_armed = True
            signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 0.01))
            return _grade_core(answer, gold_latex, None)
        finally:
            _budget_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _BudgetExceeded:
        return "timeout"
    except (RecursionError, MemoryError):
        return "error"
    except Exception:
        return "error"


def _worker_main() -> None:  # pragma: no cover - runs in the worker subprocess
    """Entry point of a grading worker: JSON-line requests on stdin, JSON-line replies on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent; we exit on stdin EOF
    signal.signal(signal.SIGALRM, _on_budget_alarm)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_LIMIT_BYTES, WORKER_MEMORY_LIMIT_BYTES))
    except Exception:
        pass
    # Keep the protocol channel private: anything a library prints goes to stderr instead.
    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    _silence_math_verify_logs()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 3000))
    _grade_in_worker("1", "\\boxed{1}", 30.0)  # import sympy & co. before reporting ready
    channel.write(b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            status = _grade_in_worker(str(request["answer"]), str(request["gold"]), float(request["timeout"]))
            reply = {"id": request.get("id"), "status": status}
        except Exception:
            reply = {"id": None, "status": "error"}
        channel.write(json.dumps(reply).encode("ascii") + b"\n")


# --------------------------------------------------------------------------------------------------
# Worker processes (parent side)
# --------------------------------------------------------------------------------------------------

_BOOTSTRAP = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('_stapo_grading_worker', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "module._worker_main()\n"
)


class _WorkerError(Exception):
    """The worker could not be started, could not be reached, or died."""


class _WorkerTimeout(_WorkerError):
    """The worker missed its hard deadline (stuck where its own time budget could not stop it)."""


class _Worker:
    """One grading subprocess and its pipes; used by one thread at a time."""

    def __init__(self) -> None:
        if not sys.executable:
            raise _WorkerError("sys.executable is not set")
        self.requests = 0
        self._next_id = 0
        self._buffer = b""
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, os.path.abspath(__file__)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
        except OSError as exc:
            raise _WorkerError(f"cannot start a grading worker: {exc}") from exc
        try:
            self._read_line(time.monotonic() + WORKER_STARTUP_TIMEOUT_S)
        except _WorkerError:
            self.kill()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_line(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerTimeout("deadline exceeded")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerError("worker exited")
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
            raise _WorkerError(f"cannot send to the grading worker: {exc}") from exc
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
                worker = _Worker()  # may raise _WorkerError: the caller falls back to inline grading
                with self._lock:
                    self._all.append(worker)
            try:
                status = worker.grade(answer, gold_latex, timeout_s)
            except _WorkerError as exc:
                # Stuck past the hard deadline, or dead: kill it; the next call starts a fresh one.
                self._discard(worker, graceful=False)
                return "timeout" if isinstance(exc, _WorkerTimeout) else "error"
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
_fallback_warned = False


def _get_pool() -> _WorkerPool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            # A forked child must not share its parent's workers: start its own.
            _pool = _WorkerPool(_settings.max_workers)
        return _pool


def _after_fork_in_child() -> None:
    global _pool, _pool_lock, _counts_lock, _warned_lock
    _pool = None
    _pool_lock = threading.Lock()
    _counts_lock = threading.Lock()
    _warned_lock = threading.Lock()


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


def configure_grader(
    *, backend: str | None = None, timeout_s: float | None = None, max_workers: int | None = None
) -> None:
    """Change the process-wide grading settings; ``None`` leaves a setting unchanged.

    Args:
        backend: ``"process"`` (default; bounded time from any thread) or ``"inline"`` (in-process
            math-verify; bounded on the main thread only). Environment: ``STAPO_GRADER_BACKEND``.
        timeout_s: Time budget per graded answer, seconds (default :data:`DEFAULT_TIMEOUT_S`).
            Environment: ``STAPO_GRADER_TIMEOUT``.
        max_workers: Number of worker processes (default ``min(4, cpu_count)``); started lazily, so a
            purely sequential caller only ever starts one. Environment: ``STAPO_GRADER_WORKERS``.
    """
    if backend is not None:
        if backend not in ("process", "inline"):
            raise ValueError(f"backend must be 'process' or 'inline', got {backend!r}")
        _settings.backend = backend
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        _settings.timeout_s = float(timeout_s)
    if max_workers is not None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        _settings.max_workers = int(max_workers)
        shutdown_grader()  # the next call builds a pool of the new size


def _run_math_verify(answer: str, gold_latex: str, timeout_s: float) -> str:
    global _fallback_warned
    if _settings.backend == "process":
        pool = _get_pool()
        if not pool.broken:
            try:
                return pool.grade(answer, gold_latex, timeout_s)
            except _WorkerError as exc:
                pool.broken = True
                if not _fallback_warned:
                    _fallback_warned = True
                    warnings.warn(
                        f"Grading worker processes are unavailable ({exc}); grading in-process instead, "
                        "where time limits only apply on the main thread.",
                        GradingWarning,
                        stacklevel=4,
                    )
    return _grade_inline(answer, gold_latex, timeout_s)


# --------------------------------------------------------------------------------------------------
# Public grading API
# --------------------------------------------------------------------------------------------------


def _grade_status(completion: Any, gold: Any, timeout_s: float | None) -> str:
    gold_latex = _gold_to_latex(gold)
    if gold_latex is None:
        _warn_unparseable_gold(gold)
        return "unparseable_gold"
    answer = extract_boxed_answer(completion_text(completion))
    if answer is None:
        return "no_box"
    if len(answer) > MAX_ANSWER_CHARS or _max_brace_depth(answer) > MAX_BRACE_DEPTH:
        return "too_complex"
    if not answer:
        return _WRONG
    status = _run_math_verify(answer, gold_latex, timeout_s if timeout_s else _settings.timeout_s)
    if status == "unparseable_gold":
        _warn_unparseable_gold(gold)
    return status


def grade_with_status(completion: Any, gold: Any, *, timeout_s: float | None = None) -> tuple[bool, str]:
    """Grade one completion and say why: ``(is_correct, status)``.

    ``status`` is ``"correct"``, ``"wrong"`` or one of :data:`PROBLEM_KEYS`. The result is tallied in
    :func:`reward_problem_counts`. Never raises (except ``KeyboardInterrupt``/``SystemExit``).

    Args:
        completion: Completion text, or a TRL conversational completion (see :func:`completion_text`).
        gold: Reference answer, e.g. ``"34"``, ``"\\frac{1}{2}"``, ``"$\\sqrt{2}$"`` or a number.
        timeout_s: Time budget for this answer (default: the configured budget, 3 s).
    """
    try:
        status = _grade_status(completion, gold, timeout_s)
    except Exception:
        logger.debug("Grading failed", exc_info=True)
        status = "error"
    _record(status)
    return status == _CORRECT, status


def grade(completion: Any, gold: Any, *, timeout_s: float | None = None) -> bool:
    """Return True when the last boxed answer of ``completion`` is mathematically equal to ``gold``.

    The answer is the content of the last complete ``\\boxed{...}`` (see :func:`extract_boxed_answer`);
    it and the gold answer (wrapped as ``\\boxed{gold}``, ``$...$`` delimiters removed) are parsed with
    ``math_verify.parse`` and compared with ``math_verify.verify``. So ``\\dfrac{1}{2}``, ``0.5`` and
    ``1/2`` all match a gold of ``\\frac{1}{2}``, ``1,000`` matches ``1000``, and trailing units such as
    ``10 \\text{ cm}`` are ignored (math-verify's normalisation).

    Robust by construction: no box, an empty/unparseable gold, a parser exception, a pathological
    expression or an exhausted time budget all give ``False``; it never raises and, from any thread,
    spends at most about ``timeout_s + 1 + timeout_s / 2`` seconds on the answer (plus the start of a
    worker process when one is needed, about a second, and any wait for a free worker when more threads
    grade at once than there are workers). Problems are tallied in :func:`reward_problem_counts`; an
    unparseable gold answer is also warned about once per distinct value.

    Args:
        completion: Completion text, or a TRL conversational completion (see :func:`completion_text`).
        gold: Reference answer, e.g. ``"34"``, ``"\\frac{1}{2}"`` or a number.
        timeout_s: Time budget for this answer (default: the configured budget, 3 s).
    """
    return grade_with_status(completion, gold, timeout_s=timeout_s)[0]


def grade_batch(
    completions: Sequence[Any], golds: Sequence[Any], *, timeout_s: float | None = None
) -> list[bool]:
    """Grade many pairs, spreading the work over the worker processes; same semantics as :func:`grade`.

    Args:
        completions: Completions (strings or conversational completions).
        golds: Gold answers, one per completion.
        timeout_s: Time budget per answer (default: the configured budget).

    Raises:
        ValueError: If the two sequences differ in length.
    """
    if len(completions) != len(golds):
        raise ValueError(f"grade_batch got {len(completions)} completions but {len(golds)} gold answers")
    pairs = list(zip(completions, golds))
    in_workers = _settings.backend == "process" and not (_pool is not None and _pool.broken)
    # Inline grading stays on the calling thread: math-verify's timeouts only work on the main thread.
    workers = min(_settings.max_workers, len(pairs)) if in_workers else 1
    if workers <= 1:
        return [grade(c, g, timeout_s=timeout_s) for c, g in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stapo-grade") as executor:
        return list(executor.map(lambda pair: grade(pair[0], pair[1], timeout_s=timeout_s), pairs))


def _golds_for(completions: Sequence[Any], answer: Sequence[Any] | None, func: str) -> Sequence[Any]:
    if answer is None:
        raise ValueError(
            f"{func} needs the gold answers as the `answer` keyword: give the training dataset an "
            "'answer' column (stapo_trl.data.prepare_dataset does) so TRL passes it to reward functions."
        )
    if isinstance(answer, (str, bytes)) or len(answer) != len(completions):
        got = "a single string" if isinstance(answer, (str, bytes)) else f"{len(answer)} answers"
        raise ValueError(f"{func} got {len(completions)} completions but {got}; expected one answer each")
    return answer


def boxed_reward(completions: Sequence[Any], answer: Sequence[Any] | None = None, **kwargs: Any) -> list[float]:
    """The STAPO paper's binary reward: ``+1.0`` when the boxed answer is correct, else ``-1.0``.

    Signature of a TRL (1.16) reward function: TRL calls it as ``boxed_reward(prompts=...,
    completions=..., completion_ids=..., trainer_state=..., log_extra=..., log_metric=..., answer=[...],
    **other_dataset_columns)``; the dataset's ``answer`` column supplies the gold answers and all other
    keywords are ignored. TRL logs it as ``rewards/boxed_reward/mean``.

    Args:
        completions: One completion per sample (strings or conversational message lists).
        answer: Gold answers, one per completion.
        **kwargs: Ignored (the rest of what TRL passes).

    Returns:
        One float per completion, each ``1.0`` or ``-1.0``.

    Raises:
        ValueError: If ``answer`` is missing or its length differs from ``completions``.
    """
    golds = _golds_for(completions, answer, "boxed_reward")
    return [1.0 if ok else -1.0 for ok in grade_batch(completions, golds)]


def accuracy_reward(
    completions: Sequence[Any], answer: Sequence[Any] | None = None, **kwargs: Any
) -> list[float]:
    """Like :func:`boxed_reward` but ``1.0`` / ``0.0``: the accuracy of each completion.

    Useful as a reward for 0/1 setups and as a second, zero-weight reward function whose
    ``rewards/accuracy_reward/mean`` reads directly as training accuracy.

    Args:
        completions: One completion per sample (strings or conversational message lists).
        answer: Gold answers, one per completion.
        **kwargs: Ignored (the rest of what TRL passes).

    Raises:
        ValueError: If ``answer`` is missing or its length differs from ``completions``.
    """
    golds = _golds_for(completions, answer, "accuracy_reward")
    return [1.0 if ok else 0.0 for ok in grade_batch(completions, golds)]
