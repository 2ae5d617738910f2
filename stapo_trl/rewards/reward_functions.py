"""The STAPO reward functions, with the signature of a TRL (1.16) reward function: the paper's binary reward and
the 0/1 accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .grading import grade_batch


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
