"""Markdown tables of evaluation results: one run (`eval_results.md`) and runs side by side; the stored results of a
training output directory (for its model card)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .protocol import EVAL_RESULTS_FILE, EVAL_SUBDIR, display_name, in_benchmark_order

logger = logging.getLogger(__name__)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    """A Markdown table padded so that it also reads as a plain-text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    widths = [max(w, 3) for w in widths]

    def line(cells):
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(cells, widths, align, strict=True)
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_results_markdown(results: Mapping[str, Any]) -> str:
    """One run as Markdown: a line with the model and decoding, then benchmarks as rows (n, avg@n, pass@k, mean
    completion length in tokens, truncated %) and the average of avg@n last."""
    benchmarks = results["benchmarks"]
    names = in_benchmark_order(benchmarks)
    ks = sorted({int(key[5:]) for b in benchmarks.values() for key in b if key.startswith("pass@")})
    header = ["Benchmark", "n", "avg@n", *(f"pass@{k}" for k in ks), "Mean tokens", "Truncated %"]
    rows = []
    for name in names:
        scores = benchmarks[name]
        rows.append(
            [
                scores.get("display_name", display_name(name)),
                str(scores["n"]),
                _fmt(scores["accuracy"]),
                *(_fmt(scores.get(f"pass@{k}")) for k in ks),
                _fmt(scores.get("mean_num_tokens"), 1),
                _fmt(scores.get("truncated_rate"), 1),
            ]
        )
    rows.append(["Average", "", _fmt(results["average"]["accuracy"]), *([""] * len(ks)), "", ""])
    settings = results.get("settings", {})
    revision = results.get("model_revision")
    model = f"`{results.get('model')}`" + (f" (revision `{revision}`)" if revision else "")
    decoding = settings.get("decoding")
    sampling = f"temperature {settings.get('temperature')}, top-p {settings.get('top_p')}"
    description = (
        f"Model: {model}. Decoding: {decoding + ' (' + sampling + ')' if decoding else sampling}, "
        f"at most {settings.get('max_new_tokens')} new tokens. Scores in %; avg@n is the mean accuracy over n "
        "samples per problem, pass@k the unbiased estimator of Chen et al. (2021)."
    )
    title = f"### {results['run_name']}\n\n" if results.get("run_name") else ""
    align = ["l", "r", "r", *("r" for _ in ks), "r", "r"]
    return f"{title}{description}\n\n{_markdown_table(header, rows, align)}\n"


def compare_markdown(runs: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> str:
    """Runs side by side as in the paper's table: one row per run, benchmarks as columns (avg@n, %), the average
    last. A run without a benchmark shows `-` there, and `-` as its average (which would not be comparable)."""
    if labels is None:
        labels = [run.get("run_name") or run.get("model") or f"run {i + 1}" for i, run in enumerate(runs)]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    names = in_benchmark_order(name for run in runs for name in run["benchmarks"])
    header = ["Run", *(display_name(name) for name in names), "Average"]
    rows = []
    for label, run in zip(labels, runs, strict=True):
        cells = [run["benchmarks"].get(name, {}).get("accuracy") for name in names]
        average = None if any(c is None for c in cells) else sum(cells) / len(cells)
        rows.append([label, *(_fmt(c) for c in cells), _fmt(average)])
    return _markdown_table(header, rows, ["l", *("r" for _ in names), "r"]) + "\n"


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results JSON, given as the file or as the output directory holding `eval_results.json`."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {path}")
    results = json.loads(path.read_text())
    if "benchmarks" not in results:
        raise ValueError(f"{path} is not an evaluation results file (no 'benchmarks')")
    return results


def stored_results(output_dir: str | os.PathLike) -> list[tuple[Path, dict[str, Any]]]:
    """The evaluation results stored in a training output directory, as `(path, results)` pairs.

    Reads `<output_dir>/eval_results.json` and the runs in `<output_dir>/eval/*/eval_results.json` (the default
    output directory of `stapo-eval --model <output_dir>`, and where the in-training evaluation keeps its last
    results); unreadable files are skipped with a warning.
    """
    output_dir = Path(output_dir)
    paths = []
    if (output_dir / EVAL_RESULTS_FILE).is_file():
        paths.append(output_dir / EVAL_RESULTS_FILE)
    if (output_dir / EVAL_SUBDIR).is_dir():
        paths.extend(sorted((output_dir / EVAL_SUBDIR).glob(f"*/{EVAL_RESULTS_FILE}")))
    runs = []
    for path in paths:
        try:
            runs.append((path, load_results(path)))
        except (OSError, ValueError) as error:
            logger.warning("skipping unreadable evaluation results %s: %s", path, error)
    return runs
