"""Loading finished runs (TRL's `trainer_state.json`, the demo's `metrics.jsonl`, W&B) and their evaluation results,
and the final-evaluation bar chart.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..plots import save_figure

WANDB_PREFIX = "wandb:"


def _latest_trainer_state(folder: Path) -> Path | None:
    if (folder / "trainer_state.json").is_file():
        return folder / "trainer_state.json"
    checkpoints = sorted(folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def load_run(source: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A run's logged records (dicts with `step`), from any of:

    - a `trainer_state.json` (its `log_history`), a `metrics.jsonl` (`stapo_trl.demo.DemoMetricsCallback`) or a JSON
      list of records;
    - a run folder holding one of those (`trainer_state.json` there or in its latest `checkpoint-*`, else
      `metrics.jsonl`);
    - `"wandb:entity/project/run_id"`: the run's history from the W&B API (needs network and a login); TRL's
      `train/` prefix is removed so that keys match the local logs;
    - a list of records.
    A mean benchmark accuracy `eval/avg_accuracy` is added to records that log `eval/<benchmark>/avg@<n>`.
    """
    from ..plots import load_metrics

    if isinstance(source, str) and source.startswith(WANDB_PREFIX):
        records = _load_wandb_run(source[len(WANDB_PREFIX) :])
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            state = _latest_trainer_state(path)
            if state is not None:
                path = state
            elif (path / "metrics.jsonl").is_file():
                path = path / "metrics.jsonl"
            else:
                raise FileNotFoundError(f"{source}: no trainer_state.json, checkpoint-*/ or metrics.jsonl")
        text = path.read_text(encoding="utf-8").lstrip()
        if text.startswith("{") and path.suffix == ".json":
            document = json.loads(text)
            records = [dict(r) for r in document.get("log_history", [])]
        else:
            records = load_metrics(path)
    else:
        records = load_metrics(source)
    return [_with_mean_eval_accuracy(record) for record in records]


def _with_mean_eval_accuracy(record: dict[str, Any]) -> dict[str, Any]:
    accuracies = [
        value
        for key, value in record.items()
        if key.startswith("eval/") and "/avg@" in key and isinstance(value, (int, float)) and math.isfinite(value)
    ]
    if accuracies and "eval/avg_accuracy" not in record:
        record = {**record, "eval/avg_accuracy": sum(accuracies) / len(accuracies)}
    return record


def _load_wandb_run(path: str) -> list[dict[str, Any]]:
    import wandb

    run = wandb.Api().run(path)
    records = []
    for row in run.scan_history():
        record = {}
        for key, value in row.items():
            if key.startswith("_"):
                continue
            record[key[len("train/") :] if key.startswith("train/") else key] = value
        step = record.pop("global_step", None)
        record["step"] = step if step is not None else row.get("_step")
        records.append(record)
    return records


def load_eval_results(source: str | os.PathLike) -> dict[str, Any] | None:
    """A run's final evaluation (`eval_results.json` in the folder or in `<folder>/eval/*/`), or `None`."""
    from ..evaluation import EVAL_RESULTS_FILE, EVAL_SUBDIR, load_results

    folder = Path(source)
    if folder.is_file():
        folder = folder.parent
    candidates = [folder / EVAL_RESULTS_FILE, *sorted((folder / EVAL_SUBDIR).glob(f"*/{EVAL_RESULTS_FILE}"))]
    for candidate in candidates:
        if candidate.is_file():
            return load_results(candidate)
    return None


def plot_eval_bars(results: Mapping[str, Mapping[str, Any]], output_path: str | os.PathLike | None = None):
    """Final avg@n per benchmark (and their average), one bar per run: `{label: eval_results}`."""
    from matplotlib.figure import Figure

    from ..evaluation import display_name, in_benchmark_order

    names = in_benchmark_order(name for run in results.values() for name in run["benchmarks"])
    columns = [*names, "average"]
    figure = Figure(figsize=(max(5.0, 1.6 * len(columns) + 2), 3.8), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / max(len(results), 1)
    for index, (label, run) in enumerate(results.items()):
        values = [run["benchmarks"].get(name, {}).get("accuracy", float("nan")) for name in names]
        values.append(run.get("average", {}).get("accuracy") or float("nan"))
        positions = [column + (index - (len(results) - 1) / 2) * width for column in range(len(columns))]
        bars = axis.bar(positions, values, width=width, label=label, color=f"C{index % 10}")
        axis.bar_label(bars, fmt="%.1f", fontsize=7)
    axis.set_xticks(range(len(columns)), [display_name(n) for n in names] + ["Average"])
    axis.set_ylabel("avg@n accuracy (%)")
    axis.set_title("final evaluation")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, output_path)
    return figure
