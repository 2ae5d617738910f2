"""The single grading function of the project, :func:`grade` (and :func:`grade_batch`, :func:`grade_with_status`).

Grading pipeline for one ``(completion, gold)`` pair:

1. :func:`~stapo_trl.rewards.extraction.completion_text` turns a TRL completion (plain string or list of chat
   messages) into text.
2. :func:`~stapo_trl.rewards.extraction.extract_boxed_answer` takes the content of the last complete
   ``\\boxed{...}`` (a linear-time brace matcher, safe on megabyte-long or deeply nested input).
3. The gold answer is wrapped as ``\\boxed{gold}`` and both are parsed and compared with
   `math-verify <https://github.com/huggingface/Math-Verify>`_ (``math_verify.parse`` then
   ``math_verify.verify``), in a grading worker process (:mod:`stapo_trl.rewards.pool`) by default.

Problem counters
----------------
Every graded pair is tallied in a thread-safe, process-local counter; :func:`reward_problem_counts`
returns (and by default resets) the counts, so a trainer can log them as metrics.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .extraction import (
    MAX_ANSWER_CHARS,
    MAX_BRACE_DEPTH,
    completion_text,
    extract_boxed_answer,
    gold_to_latex,
    max_brace_depth,
)
from .pool import WorkerError, get_pool, pool_broken, shutdown_grader
from .settings import grader_settings
from .verify import CORRECT, WRONG, grade_inline

logger = logging.getLogger(__name__)


#: Keys of :func:`reward_problem_counts` besides ``"graded"`` (the number of graded pairs).
#: ``no_box``: no complete ``\\boxed{}`` in the completion; ``too_complex``: boxed answer over the size
#: or nesting bounds; ``unparseable_gold``: gold answer empty or not parseable by math-verify;
#: ``timeout``: the time budget ran out; ``error``: any other failure (parser exception, dead worker).
PROBLEM_KEYS: tuple[str, ...] = ("no_box", "too_complex", "unparseable_gold", "timeout", "error")


class GradingWarning(UserWarning):
    """Warning about a grading problem that deserves a look (unparseable gold, grader fallback)."""




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


def _after_fork_in_child() -> None:
    global _counts_lock, _warned_lock
    _counts_lock = threading.Lock()
    _warned_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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


_fallback_warned = False


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
        grader_settings.backend = backend
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        grader_settings.timeout_s = float(timeout_s)
    if max_workers is not None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers!r}")
        grader_settings.max_workers = int(max_workers)
        shutdown_grader()  # the next call builds a pool of the new size


def _run_math_verify(answer: str, gold_latex: str, timeout_s: float) -> str:
    global _fallback_warned
    if grader_settings.backend == "process":
        pool = get_pool()
        if not pool.broken:
            try:
                return pool.grade(answer, gold_latex, timeout_s)
            except WorkerError as exc:
                pool.broken = True
                if not _fallback_warned:
                    _fallback_warned = True
                    warnings.warn(
                        f"Grading worker processes are unavailable ({exc}); grading in-process instead, "
                        "where time limits only apply on the main thread.",
                        GradingWarning,
                        stacklevel=4,
                    )
    return grade_inline(answer, gold_latex, timeout_s)


def _grade_status(completion: Any, gold: Any, timeout_s: float | None) -> str:
    gold_latex = gold_to_latex(gold)
    if gold_latex is None:
        _warn_unparseable_gold(gold)
        return "unparseable_gold"
    answer = extract_boxed_answer(completion_text(completion))
    if answer is None:
        return "no_box"
    if len(answer) > MAX_ANSWER_CHARS or max_brace_depth(answer) > MAX_BRACE_DEPTH:
        return "too_complex"
    if not answer:
        return WRONG
    status = _run_math_verify(answer, gold_latex, timeout_s if timeout_s else grader_settings.timeout_s)
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
    return status == CORRECT, status


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
    in_workers = grader_settings.backend == "process" and not pool_broken()
    # Inline grading stays on the calling thread: math-verify's timeouts only work on the main thread.
    workers = min(grader_settings.max_workers, len(pairs)) if in_workers else 1
    if workers <= 1:
        return [grade(c, g, timeout_s=timeout_s) for c, g in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stapo-grade") as executor:
        return list(executor.map(lambda pair: grade(pair[0], pair[1], timeout_s=timeout_s), pairs))
