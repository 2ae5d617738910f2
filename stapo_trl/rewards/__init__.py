"""Rule-based grading of boxed math answers and the STAPO reward functions.

The package holds the single grading function of the project: the training reward (``boxed_reward``, the paper's
binary +1/-1 reward) and the evaluation harness both call :func:`grade`, so an answer that earns a reward during
training is graded the same way at evaluation time.

The modules, in the order a graded pair goes through them (every public name is re-exported here):

- ``extraction``: the completion's text, its last ``\\boxed{...}`` answer and the gold answer as LaTeX, in pure
  Python and linear time; the input bounds (``MAX_ANSWER_CHARS``, ``MAX_BRACE_DEPTH``, ``MAX_GOLD_CHARS``).
- ``grading``: :func:`grade`, :func:`grade_with_status`, :func:`grade_batch`, the settings
  (:func:`configure_grader`) and the problem counters (:func:`reward_problem_counts`).
- ``pool``: the grading worker processes that bound the time of math-verify from any thread, and why they are
  our own rather than a process-pool library's.
- ``verify``: the math-verify part, run in a worker (or in process as the fallback).
- ``settings``: the process-wide settings (backend, time budget, workers) read from ``STAPO_GRADER_*``.
- ``reward_functions``: :func:`boxed_reward` and :func:`accuracy_reward`, TRL reward functions.
"""

from .extraction import MAX_ANSWER_CHARS, MAX_BRACE_DEPTH, MAX_GOLD_CHARS, completion_text, extract_boxed_answer
from .grading import (
    PROBLEM_KEYS,
    GradingWarning,
    configure_grader,
    grade,
    grade_batch,
    grade_with_status,
    reward_problem_counts,
)
from .pool import WORKER_MAX_REQUESTS, WORKER_MEMORY_LIMIT_BYTES, WORKER_STARTUP_TIMEOUT_S, shutdown_grader
from .reward_functions import accuracy_reward, boxed_reward
from .settings import DEFAULT_TIMEOUT_S

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "GradingWarning",
    "MAX_ANSWER_CHARS",
    "MAX_BRACE_DEPTH",
    "MAX_GOLD_CHARS",
    "PROBLEM_KEYS",
    "WORKER_MAX_REQUESTS",
    "WORKER_MEMORY_LIMIT_BYTES",
    "WORKER_STARTUP_TIMEOUT_S",
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
