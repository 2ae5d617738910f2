"""The resumable sample store of an output directory (`eval_samples.jsonl` + `eval_settings.json`).

Samples are appended (flushed and fsynced) as each batch finishes; a re-run loads what is done and refuses
(`ResumeError`) to mix samples produced with other settings or for other prompts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .protocol import EVAL_SAMPLES_FILE, EVAL_SETTINGS_FILE

logger = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """The output directory holds samples produced with other settings (or for other prompts)."""


class SampleStore:
    """`eval_samples.jsonl` + `eval_settings.json` of an output directory: load what is done, append new samples
    (flushed and fsynced per batch), refuse other settings."""

    def __init__(self, output_dir: str | os.PathLike, settings: Mapping[str, Any]):
        self.output_dir = Path(output_dir)
        self.samples_path = self.output_dir / EVAL_SAMPLES_FILE
        self.settings_path = self.output_dir / EVAL_SETTINGS_FILE
        self.settings = to_jsonable(dict(settings))
        self.records: dict[tuple[str, int, int], dict] = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self._load()

    def _has_samples(self) -> bool:
        return self.samples_path.exists() and self.samples_path.stat().st_size > 0

    def _check_settings(self) -> None:
        if self.settings_path.exists() and self._has_samples():
            stored = json.loads(self.settings_path.read_text())
            keys = sorted(set(stored) | set(self.settings))
            diff = [k for k in keys if stored.get(k) != self.settings.get(k)]
            if diff:
                lines = "\n".join(f"  {k}: stored {stored.get(k)!r}, now {self.settings.get(k)!r}" for k in diff)
                raise ResumeError(
                    f"{self.output_dir} holds samples produced with other settings; refusing to mix them:\n{lines}\n"
                    "Use another --output_dir (or delete this one) to evaluate with the new settings."
                )
        elif self._has_samples():
            raise ResumeError(
                f"{self.samples_path} exists but {self.settings_path.name} does not: the settings of those samples "
                "are unknown. Use another --output_dir."
            )
        else:  # a fresh directory (or one whose run stopped before its first sample): these settings now
            write_json_atomic(self.settings_path, self.settings)

    def _load(self) -> None:
        if not self.samples_path.exists():
            return
        raw = self.samples_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A crash during a write left a partial last line: drop it (its batch is generated again).
            keep = raw.rfind(b"\n") + 1
            logger.warning("dropping a partial last line of %s", self.samples_path)
            with open(self.samples_path, "r+b") as handle:
                handle.truncate(keep)
            raw = raw[:keep]
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ResumeError(f"{self.samples_path}:{number} is not valid JSON: {error}") from error
            key = (record["benchmark"], int(record["problem"]), int(record["sample"]))
            self.records.setdefault(key, record)

    def check_problem(self, benchmark: str, problem: int, prompt: str, gold: str) -> None:
        record = self.records.get((benchmark, problem, 0)) or next(
            (r for (b, p, _), r in self.records.items() if b == benchmark and p == problem), None
        )
        if record is None:
            return
        if record["prompt"] != prompt or record["gold"] != gold:
            what = "prompt" if record["prompt"] != prompt else "gold answer"
            raise ResumeError(
                f"{self.samples_path}: the stored {what} of {benchmark} problem {problem} differs from the current one "
                "(another dataset, split, prompt template or chat template?); refusing to mix them. "
                "Use another --output_dir."
            )

    def append(self, records: Sequence[dict]) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.records[(record["benchmark"], record["problem"], record["sample"])] = record


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def to_jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return value
