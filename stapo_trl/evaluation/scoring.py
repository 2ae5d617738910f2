"""Grading of sampled completions and the metrics: unbiased pass@k, avg@n and the per-benchmark scores.

Completions are graded by `stapo_trl.rewards.grade`, the function behind the training reward, so that evaluation
and training agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. (2021): `1 - C(n - c, k) / C(n, k)`.

    The probability that at least one of `k` samples drawn without replacement from `n` samples, `c` of them
    correct, is correct. Exact (integer binomials), in [0, 1].
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_n(correct: Sequence[Sequence[bool]]) -> float:
    """avg@n in percent: the mean over problems of the fraction of correct samples (`correct[problem][sample]`)."""
    if not correct:
        raise ValueError("avg@n of zero problems is undefined")
    return 100.0 * sum(sum(row) / len(row) for row in correct) / len(correct)


def benchmark_scores(
    correct: Sequence[Sequence[bool]], num_tokens: Sequence[Sequence[int]], ks: Iterable[int], truncated=None
) -> dict[str, Any]:
    """The scores of one benchmark from the per-problem, per-sample grades (all rows have the same length n).

    Keys: `n`, `num_problems`, `num_samples`, `accuracy` (= `avg@<n>`), `avg@<n>`, `pass@<k>` for each k <= n
    (percent), `mean_num_tokens` and, when `truncated` is given, `truncated_rate` (percent).
    """
    n = len(correct[0])
    if any(len(row) != n for row in correct):
        raise ValueError("every problem must have the same number of samples")
    accuracy = avg_at_n(correct)
    scores: dict[str, Any] = {
        "n": n,
        "num_problems": len(correct),
        "num_samples": n * len(correct),
        "accuracy": accuracy,
        f"avg@{n}": accuracy,
    }
    for k in sorted(set(ks)):
        if k <= n:
            scores[f"pass@{k}"] = 100.0 * sum(pass_at_k(n, sum(row), k) for row in correct) / len(correct)
    flat_tokens = [t for row in num_tokens for t in row]
    scores["mean_num_tokens"] = sum(flat_tokens) / len(flat_tokens)
    if truncated is not None:
        flat = [bool(t) for row in truncated for t in row]
        scores["truncated_rate"] = 100.0 * sum(flat) / len(flat)
    return scores


def default_pass_k(n: int) -> tuple[int, ...]:
    """pass@k reported by default: k = 1 and k = n."""
    return tuple(sorted({1, n}))


def grade_sample(completion: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) of one completion: `stapo_trl.rewards.grade`, the grading of the training
    reward, and the boxed answer it read (for inspection only)."""
    from ..rewards import extract_boxed_answer, grade

    return bool(grade(completion, gold)), extract_boxed_answer(completion)


def grade_samples(completions: Sequence[str], golds: Sequence[str]) -> list[tuple[bool, str | None]]:
    """`grade_sample` for a batch: `stapo_trl.rewards.grade_batch` runs `grade` over its worker processes."""
    from ..rewards import extract_boxed_answer, grade_batch

    correct = grade_batch(list(completions), list(golds))
    return [(bool(ok), extract_boxed_answer(text)) for ok, text in zip(correct, completions, strict=True)]
