"""`EvalConfig`: everything `stapo-eval` needs, validated on creation (the messages name the CLI flags), and the
settings recorded with the samples (model revision, resume fingerprint).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .generators import SamplingParams, vllm_available
from .protocol import (
    BACKENDS,
    BENCHMARK_ORDER,
    DATASET_OVERRIDE_FIELDS,
    DECODING_PRESETS,
    DEFAULT_DECODING,
    EVAL_SUBDIR,
    PAPER_MAX_NEW_TOKENS,
    in_benchmark_order,
)

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Everything `stapo-eval` needs; validated on creation (the messages name the CLI flags).

    `n`: `None` for the paper's avg@N (32 on AIME24/AIME25/AMC23, 4 elsewhere), an int for every benchmark, or a
    mapping benchmark -> n (others keep the paper's). `temperature`/`top_p`: `None` takes the `decoding` preset.
    `pass_k`: `None` for k = 1 and n; otherwise each k is reported on the benchmarks with n >= k (a k above every
    n is an error). `dataset_overrides`: benchmark -> {path, split, config, question_column, answer_column}.
    `output_dir`: `None` gives `<model>/eval/<tag>` for a local model, `eval_runs/<org--name>/<tag>` otherwise.
    """

    model: str | None = None
    revision: str | None = None
    output_dir: str | None = None
    benchmarks: Sequence[str] = BENCHMARK_ORDER
    decoding: str = DEFAULT_DECODING
    temperature: float | None = None
    top_p: float | None = None
    n: int | Mapping[str, int] | None = None
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    pass_k: Sequence[int] | None = None
    seed: int = 0
    batch_size: int = 64
    max_problems: int | None = None
    dataset_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    backend: str = "auto"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"
    max_batch_sequences: int = 64
    trust_remote_code: bool = False
    chat_template_kwargs: Mapping[str, Any] | None = None
    run_name: str | None = None
    progress: bool = True

    def __post_init__(self):
        from ..data import BENCHMARKS

        known = list(BENCHMARKS)
        benchmarks = [str(b).strip().lower() for b in self.benchmarks]
        if len(benchmarks) == 1 and benchmarks[0] == "all":
            benchmarks = in_benchmark_order(known)
        if not benchmarks:
            raise ValueError(f"--benchmarks: select at least one of: {', '.join(known)} (or 'all')")
        unknown = [b for b in benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(
                f"--benchmarks: unknown benchmark(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(known)} "
                "(or 'all')"
            )
        self.benchmarks = tuple(dict.fromkeys(benchmarks))
        if self.decoding not in DECODING_PRESETS:
            raise ValueError(
                f"--decoding: unknown preset {self.decoding!r}; accepted: {', '.join(DECODING_PRESETS)} "
                f"({', '.join(f'{k} = temperature {t}, top-p {p}' for k, (t, p) in DECODING_PRESETS.items())})"
            )
        if self.temperature is not None and not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.n, Mapping):
            self.n = {str(b).lower(): value for b, value in self.n.items()}
            bad = [b for b in self.n if b not in BENCHMARKS]
            if bad:
                raise ValueError(f"--n: unknown benchmark(s) {', '.join(map(repr, bad))}; accepted: {', '.join(known)}")
            values = list(self.n.values())
        else:
            values = [] if self.n is None else [self.n]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--n must be a positive integer (samples per problem), got {value!r}")
        _positive_int("--max_new_tokens", self.max_new_tokens)
        _positive_int("--batch_size", self.batch_size)
        _positive_int("--tensor_parallel_size", self.tensor_parallel_size)
        _positive_int("--data_parallel_size", self.data_parallel_size)
        _positive_int("--max_batch_sequences", self.max_batch_sequences)
        if self.max_problems is not None:
            _positive_int("--max_problems", self.max_problems)
        if self.max_model_len is not None:
            _positive_int("--max_model_len", self.max_model_len)
        if not (0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"--gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.pass_k is not None:
            ks = list(self.pass_k)
            if not ks:
                raise ValueError("--pass_k: give at least one k")
            for k in ks:
                _positive_int("--pass_k", k)
            largest = max(self.samples_per_problem(b) for b in self.benchmarks)
            too_big = [k for k in ks if k > largest]
            if too_big:
                raise ValueError(
                    f"--pass_k: k={too_big} exceeds the number of samples per problem of every selected benchmark "
                    f"(largest n = {largest}); pass@k needs k <= n (raise --n)"
                )
            self.pass_k = tuple(sorted(set(ks)))
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend: unknown backend {self.backend!r}; accepted: {', '.join(BACKENDS)}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"--dtype: unknown dtype {self.dtype!r}; accepted: auto, bfloat16, float16, float32")
        overrides = {}
        for benchmark, fields in dict(self.dataset_overrides).items():
            benchmark = str(benchmark).lower()
            if benchmark not in BENCHMARKS:
                raise ValueError(
                    f"dataset override for unknown benchmark {benchmark!r}; accepted: {', '.join(known)}"
                )
            bad = [f for f in fields if f not in DATASET_OVERRIDE_FIELDS]
            if bad:
                raise ValueError(f"dataset override field(s) {bad}; accepted: {', '.join(DATASET_OVERRIDE_FIELDS)}")
            overrides[benchmark] = dict(fields)
        self.dataset_overrides = overrides
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, Mapping):
            raise ValueError("--chat_template_kwargs must be a JSON object")

    def samples_per_problem(self, benchmark: str) -> int:
        from ..data import PAPER_SAMPLES_PER_PROBLEM

        if isinstance(self.n, Mapping) and benchmark in self.n:
            return int(self.n[benchmark])
        if isinstance(self.n, int):
            return self.n
        return int(PAPER_SAMPLES_PER_PROBLEM.get(benchmark, 4))

    @property
    def resolved_temperature(self) -> float:
        return DECODING_PRESETS[self.decoding][0] if self.temperature is None else float(self.temperature)

    @property
    def resolved_top_p(self) -> float:
        return DECODING_PRESETS[self.decoding][1] if self.top_p is None else float(self.top_p)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.resolved_temperature,
            top_p=self.resolved_top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def decoding_label(self) -> str:
        """The preset's name when temperature and top-p are the preset's, else `custom`."""
        if (self.resolved_temperature, self.resolved_top_p) == DECODING_PRESETS[self.decoding]:
            return self.decoding
        return "custom"

    def decoding_tag(self) -> str:
        """Name of the default output sub-folder: the preset (`training`, `justrl`), `-max<N>` appended when the
        token limit is not the paper's; explicit values (`T0.6-top_p0.95`) when they differ from the preset."""
        label = self.decoding_label()
        tag = label if label != "custom" else f"T{self.resolved_temperature:g}-top_p{self.resolved_top_p:g}"
        if self.max_new_tokens != PAPER_MAX_NEW_TOKENS:
            tag += f"-max{self.max_new_tokens}"
        return tag

    def resolved_output_dir(self) -> str:
        if self.output_dir is not None:
            return self.output_dir
        if self.model is None:
            raise ValueError("--model is required")
        if os.path.isdir(self.model):
            return os.path.join(self.model, EVAL_SUBDIR, self.decoding_tag())
        return os.path.join("eval_runs", self.model.replace("/", "--"), self.decoding_tag())

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.backend


def _positive_int(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def resolve_model_revision(model: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The revision recorded with the results: `"local"` for a local directory, the commit hash for a Hub model
    (read from the local Hub cache after fetching `config.json`; offline this works when the model is cached),
    else the requested revision (or `"unknown"`) when it cannot be resolved."""
    if os.path.isdir(model):
        return "local"
    if revision is not None and _SHA_RE.match(revision):
        return revision
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", revision=revision, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - the revision is informative, never a reason to fail
        logger.warning("could not resolve the commit of %s@%s: %s", model, revision or "main", error)
        return revision or "unknown"
    parts = Path(path).parts
    if "snapshots" in parts:
        candidate = parts[parts.index("snapshots") + 1]
        if _SHA_RE.match(candidate):
            return candidate
    return revision or "unknown"


def settings_fingerprint(config: EvalConfig, model_revision: str) -> dict[str, Any]:
    """The settings that must match for samples to be mixed on resume (`FINGERPRINT_KEYS`)."""
    model = os.path.abspath(config.model) if os.path.isdir(config.model) else config.model
    return {
        "model": model,
        "model_revision": model_revision,
        "temperature": config.resolved_temperature,
        "top_p": config.resolved_top_p,
        "max_new_tokens": config.max_new_tokens,
        "chat_template_kwargs": dict(config.chat_template_kwargs or {}),
    }
