"""The math-verify part of grading: parse and compare one answer with its gold, under a time budget.

It runs in a grading worker process (`stapo_trl.rewards.pool`), or in process as the fallback. A worker loads this
file by its path, so it imports nothing but the standard library at module level (math-verify inside the functions).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
from functools import lru_cache
from typing import Any

logger = logging.getLogger(__name__)


CORRECT = "correct"


WRONG = "wrong"


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
        return WRONG
    return CORRECT if verify(list(gold), pred, timeout_seconds=mv_timeout) else WRONG


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


def grade_inline(answer: str, gold_latex: str, timeout_s: float) -> str:
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


def _worker_main(memory_limit_bytes: int) -> None:  # pragma: no cover - runs in the worker subprocess
    """Entry point of a grading worker: JSON-line requests on stdin, JSON-line replies on stdout; the address space
    is limited to ``memory_limit_bytes`` (``RLIMIT_AS``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent; we exit on stdin EOF
    signal.signal(signal.SIGALRM, _on_budget_alarm)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
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
