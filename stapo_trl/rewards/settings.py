"""Process-wide grader settings (backend, time budget, number of workers), from the environment at import and
`stapo_trl.rewards.configure_grader` after."""

from __future__ import annotations

import os

#: Time budget (seconds) for parsing and verifying one answer. Environment: ``STAPO_GRADER_TIMEOUT``.
DEFAULT_TIMEOUT_S: float = 3.0


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


class GraderSettings:
    """Process-wide grader settings; change them with :func:`configure_grader`."""

    def __init__(self) -> None:
        backend = os.environ.get("STAPO_GRADER_BACKEND", "process").strip().lower()
        self.backend: str = backend if backend in ("process", "inline") else "process"
        self.timeout_s: float = _env_float("STAPO_GRADER_TIMEOUT", DEFAULT_TIMEOUT_S)
        self.max_workers: int = _env_int("STAPO_GRADER_WORKERS", min(4, os.cpu_count() or 1))


grader_settings = GraderSettings()
