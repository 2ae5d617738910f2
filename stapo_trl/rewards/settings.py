"""Process-wide grader settings (backend, time budget, number of workers), from the environment at import and
`stapo_trl.rewards.configure_grader` after."""

from __future__ import annotations

import os

#: Time budget (seconds) for parsing and verifying one answer. Environment: ``STAPO_GRADER_TIMEOUT``.
DEFAULT_TIMEOUT_S: float = 3.0


def _positive_from_env(name: str, default, kind: type):
    """`kind(os.environ[name])` when it is set and positive, else `default`."""
    try:
        value = kind(os.environ[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 else default


class GraderSettings:
    """Process-wide grader settings; change them with :func:`configure_grader`."""

    def __init__(self) -> None:
        backend = os.environ.get("STAPO_GRADER_BACKEND", "process").strip().lower()
        self.backend: str = backend if backend in ("process", "inline") else "process"
        self.timeout_s: float = _positive_from_env("STAPO_GRADER_TIMEOUT", DEFAULT_TIMEOUT_S, float)
        self.max_workers: int = _positive_from_env("STAPO_GRADER_WORKERS", min(4, os.cpu_count() or 1), int)


grader_settings = GraderSettings()
