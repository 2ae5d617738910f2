"""The evaluation loop: generate, grade and score benchmark tasks, store every sample, write the results."""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .generators import Generator, SamplingParams
from .prompts import format_prompt
from .protocol import EVAL_MARKDOWN_FILE, EVAL_RESULTS_FILE, display_name
from .report import format_results_markdown
from .scoring import benchmark_scores, default_pass_k, grade_samples
from .store import SampleStore, to_jsonable, write_json_atomic


@dataclass
class BenchmarkTask:
    """The problems of one benchmark: `prompts` (conversational or text) and gold `answers`, `n` samples each.
    `metadata` (e.g. the dataset spec) is stored with the results."""

    name: str
    prompts: Sequence[Any]
    answers: Sequence[str]
    n: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.prompts) != len(self.answers):
            raise ValueError(f"{self.name}: {len(self.prompts)} prompts but {len(self.answers)} answers")
        if not self.prompts:
            raise ValueError(f"{self.name}: no problems")
        if self.n <= 0:
            raise ValueError(f"{self.name}: n must be positive, got {self.n}")


def _batch_seed(seed: int | None, benchmark: str, problem: int) -> int | None:
    """A seed per (benchmark, first problem of the batch): a resumed run draws the same as an uninterrupted one."""
    if seed is None:
        return None
    return zlib.crc32(f"{seed}:{benchmark}:{problem}".encode()) & 0x7FFFFFFF


def run_evaluation(
    generator: Generator,
    tasks: Sequence[BenchmarkTask],
    params: SamplingParams,
    *,
    pass_k: Sequence[int] | None = None,
    batch_size: int = 64,
    output_dir: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    format_prompt_fn: Callable[[Any], str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, grade and score `tasks`; return the results (see `EVAL_RESULTS_FILE` for the layout).

    - `batch_size` prompts go to `generator.generate` per call; with `output_dir`, the samples of each call are
      appended to `eval_samples.jsonl` (flushed) before the next call, and samples already there are skipped (a
      problem with some samples done gets only the missing ones).
    - `settings`: what identifies how samples are produced (model, revision, temperature, top-p, max new tokens,
      chat template kwargs, see `FINGERPRINT_KEYS`); stored in `eval_settings.json`, and a re-run with other
      settings raises `ResumeError`, as does a stored prompt or gold answer that differs from the current one.
      Defaults to the fields of `params` other than the seed.
    - `pass_k`: the k of pass@k (each k <= n of the benchmark); default 1 and n.
    - `format_prompt_fn`: renders a prompt to text; default `generator.format_prompt` when it has one, else
      `format_prompt` without tokenizer.
    - `metadata`: extra entries of the results (model, run name, backend, ...).
    With `output_dir`, the results are also written to `eval_results.json` and `eval_results.md`.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if settings is None:
        settings = {"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens}
    if format_prompt_fn is None:
        format_prompt_fn = getattr(generator, "format_prompt", None) or format_prompt
    store = SampleStore(output_dir, settings) if output_dir is not None else None
    records: dict[tuple[str, int, int], dict] = dict(store.records) if store else {}

    from tqdm.auto import tqdm

    benchmarks: dict[str, Any] = {}
    for task in tasks:
        texts = [format_prompt_fn(prompt) for prompt in task.prompts]
        golds = [str(answer) for answer in task.answers]
        if store is not None:
            for problem, (text, gold) in enumerate(zip(texts, golds, strict=True)):
                store.check_problem(task.name, problem, text, gold)
        missing = {
            problem: [s for s in range(task.n) if (task.name, problem, s) not in records]
            for problem in range(len(texts))
        }
        done = sum(task.n - len(samples) for samples in missing.values())
        # Group the pending problems by how many samples they miss (usually all or none): one n per call.
        by_count: dict[int, list[int]] = {}
        for problem, samples in missing.items():
            if samples:
                by_count.setdefault(len(samples), []).append(problem)
        with tqdm(
            total=task.n * len(texts),
            initial=done,
            desc=display_name(task.name),
            unit="sample",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for count, problems in sorted(by_count.items(), reverse=True):
                for start in range(0, len(problems), batch_size):
                    batch = problems[start : start + batch_size]
                    call_params = dataclasses.replace(params, seed=_batch_seed(params.seed, task.name, batch[0]))
                    outputs = generator.generate([texts[p] for p in batch], count, call_params)
                    if len(outputs) != len(batch) or any(len(o) != count for o in outputs):
                        raise RuntimeError(
                            f"generator returned {[len(o) for o in outputs]} completions for {len(batch)} prompts "
                            f"x {count}"
                        )
                    flat = [
                        (problem, sample, completion)
                        for problem, completions in zip(batch, outputs, strict=True)
                        for sample, completion in zip(missing[problem], completions, strict=True)
                    ]
                    grades = grade_samples([c.text for _, _, c in flat], [golds[p] for p, _, _ in flat])
                    new_records = [
                        {
                            "benchmark": task.name,
                            "problem": problem,
                            "sample": sample,
                            "prompt": texts[problem],
                            "completion": completion.text,
                            "extracted_answer": extracted,
                            "gold": golds[problem],
                            "correct": correct,
                            "num_tokens": int(completion.num_tokens),
                            "truncated": bool(completion.truncated),
                        }
                        for (problem, sample, completion), (correct, extracted) in zip(flat, grades, strict=True)
                    ]
                    if store is not None:
                        store.append(new_records)
                    for record in new_records:
                        records[(record["benchmark"], record["problem"], record["sample"])] = record
                    bar.update(len(new_records))
        table = [[records[(task.name, p, s)] for s in range(task.n)] for p in range(len(texts))]
        ks = pass_k if pass_k is not None else default_pass_k(task.n)
        scores = benchmark_scores(
            [[r["correct"] for r in row] for row in table],
            [[r["num_tokens"] for r in row] for row in table],
            ks,
            truncated=[[r.get("truncated", False) for r in row] for row in table],
        )
        scores["display_name"] = display_name(task.name)
        if task.metadata:
            scores.update(to_jsonable(task.metadata))
        benchmarks[task.name] = scores

    results = build_results(benchmarks, settings=settings, params=params, metadata=metadata)
    if output_dir is not None:
        write_results(results, output_dir)
    return results


def build_results(
    benchmarks: Mapping[str, Mapping[str, Any]],
    *,
    settings: Mapping[str, Any] | None = None,
    params: SamplingParams | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document: metadata, settings, per-benchmark scores, and their unweighted average."""
    metadata = dict(metadata or {})
    all_settings = dict(settings or {})
    if params is not None:
        all_settings.setdefault("temperature", params.temperature)
        all_settings.setdefault("top_p", params.top_p)
        all_settings.setdefault("max_new_tokens", params.max_new_tokens)
        all_settings.setdefault("seed", params.seed)
    all_settings.update(metadata.pop("settings", {}))
    from .. import __version__

    results = {
        "run_name": metadata.pop("run_name", None),
        "model": metadata.pop("model", all_settings.get("model")),
        "model_revision": metadata.pop("model_revision", all_settings.get("model_revision")),
        **metadata,
        "settings": all_settings,
        "benchmarks": {name: dict(scores) for name, scores in benchmarks.items()},
        "average": {
            "accuracy": sum(s["accuracy"] for s in benchmarks.values()) / len(benchmarks) if benchmarks else None,
            "benchmarks": list(benchmarks),
        },
        "stapo_trl_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return to_jsonable(results)


def write_results(results: Mapping[str, Any], output_dir: str | os.PathLike) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / EVAL_RESULTS_FILE, results)
    (output_dir / EVAL_MARKDOWN_FILE).write_text(format_results_markdown(results))
