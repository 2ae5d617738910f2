"""Training curves from logged metrics: one panel per metric against the optimizer step.

A run's metrics are the records of TRL's logs, as `stapo_trl.demo.DemoMetricsCallback` writes them to
`metrics.jsonl` (one dict per log with `step` and the logged values) or as `trainer.state.log_history` holds them.

    from stapo_trl.plots import plot_runs, plot_training_curves

    plot_training_curves("outputs/demo/metrics.jsonl", "outputs/demo/training_curves.png")
    plot_runs({"STAPO": "runs/stapo/metrics.jsonl", "GRPO": "runs/grpo/metrics.jsonl"},
              output_path="compare.png", smooth=10)

Figures are built without pyplot and rendered by matplotlib's Agg canvas, so plotting works headless (CI,
servers), never opens a window and leaves pyplot's global state alone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

Metrics = Union[str, os.PathLike, Sequence[Mapping[str, Any]]]

# Metrics worth a panel, in display order: TRL 1.16's names, then STAPO's.
DEFAULT_KEYS: tuple[str, ...] = ("reward", "entropy", "stapo/masked_frac")
EXTENDED_KEYS: tuple[str, ...] = (
    "reward",
    "reward_std",
    "entropy",
    "completions/mean_length",
    "stapo/masked_frac",
    "stapo/candidate_frac",
    "stapo/masked_tokens",
    "stapo/entropy_threshold",
)

TITLES: dict[str, str] = {
    "reward": "mean reward",
    "reward_std": "reward std (within groups)",
    "entropy": "token entropy (nats)",
    "completions/mean_length": "completion length (tokens)",
    "stapo/masked_frac": "silenced tokens (fraction)",
    "stapo/masked_tokens": "silenced tokens (count)",
    "stapo/candidate_frac": "S2T candidates (fraction)",
    "stapo/entropy_threshold": "S2T entropy threshold tau_h",
    "loss": "loss",
    "grad_norm": "gradient norm",
    "learning_rate": "learning rate",
}


def load_metrics(metrics: Metrics) -> list[dict[str, Any]]:
    """Records from a JSONL file (one JSON object per line), a JSON file holding a list, or a list of dicts."""
    if isinstance(metrics, (str, os.PathLike)):
        with open(metrics, encoding="utf-8") as handle:
            text = handle.read()
        stripped = text.lstrip()
        if stripped.startswith("["):
            return [dict(record) for record in json.loads(stripped)]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [dict(record) for record in metrics]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """`(steps, values)` of `key` over the records that have a finite value for it.

    The step is the record's `step` (falling back to its position in the list). Records without the key
    (for example the final summary log of a trainer) are skipped.
    """
    steps: list[float] = []
    values: list[float] = []
    for position, record in enumerate(records):
        value = _number(record.get(key))
        if value is None:
            continue
        step = _number(record.get("step"))
        steps.append(step if step is not None else float(position))
        values.append(value)
    return steps, values


def smooth_values(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (`window <= 1` returns the values unchanged)."""
    if window <= 1:
        return list(values)
    smoothed, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        smoothed.append(total / min(index + 1, window))
    return smoothed


def _title(key: str) -> str:
    return TITLES.get(key, key)


def plot_runs(
    runs: Mapping[str, Metrics],
    keys: Sequence[str] | None = DEFAULT_KEYS,
    output_path: str | os.PathLike | None = None,
    smooth: int = 0,
    title: str | None = None,
    ncols: int | None = None,
    show_raw: bool = True,
):
    """Plot several runs on shared axes, one panel per metric in `keys`, against the step.

    Args:
        runs: `{label: metrics}`, where metrics is a path to `metrics.jsonl` (or a JSON list) or a list of dicts.
        keys: Metrics to draw, one panel each. `None` draws every numeric key found in any run (except `step`,
            `epoch` and TRL's timing keys). A key that no run logged gets an empty panel saying so, so that a
            missing STAPO metric is visible rather than silently dropped.
        output_path: Where to save the figure (PNG by extension; parent folders are created). `None` only
            returns the figure.
        smooth: Trailing moving-average window; with `smooth > 1` and `show_raw`, the raw curve is drawn faintly
            behind the smoothed one.
        title: Figure title.
        ncols: Panels per row (default: up to 3).
        show_raw: See `smooth`.

    Returns:
        The matplotlib `Figure` (not registered with pyplot, so nothing needs closing).
    """
    # A bare `Figure` renders with the Agg canvas and never touches pyplot's global state or a GUI backend.
    from matplotlib.figure import Figure

    loaded = {label: load_metrics(metrics) for label, metrics in runs.items()}
    if keys is None:
        keys = _numeric_keys(loaded.values())
    keys = list(keys)
    if not keys:
        raise ValueError("No metric to plot: `keys` is empty and the runs have no numeric metric.")

    ncols = ncols or min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure = Figure(figsize=(4.6 * ncols, 3.3 * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    colors = [f"C{index % 10}" for index in range(len(loaded))]

    for axis, key in zip(axes, keys):
        drawn = False
        for (label, records), color in zip(loaded.items(), colors):
            steps, values = metric_series(records, key)
            if not steps:
                continue
            drawn = True
            if smooth > 1:
                if show_raw:
                    axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                axis.plot(steps, smooth_values(values, smooth), color=color, linewidth=1.6, label=label)
            else:
                marker = "o" if len(steps) == 1 else None
                axis.plot(steps, values, color=color, linewidth=1.4, marker=marker, label=label)
        axis.set_title(_title(key), fontsize=10)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if not drawn:
            axis.text(0.5, 0.5, f"'{key}' not logged", ha="center", va="center", transform=axis.transAxes)
        elif len(loaded) > 1:
            axis.legend(fontsize=8)
    for axis in axes[len(keys) :]:
        axis.set_visible(False)
    if title:
        figure.suptitle(title)
    save_figure(figure, output_path)
    return figure


def save_figure(figure, output_path: str | os.PathLike | None) -> None:
    """Save `figure` to `output_path` (its folder created), at the resolution of every figure of the project; `None`
    saves nothing."""
    if output_path is None:
        return
    output_path = os.fspath(output_path)
    parent = os.path.dirname(output_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    figure.savefig(output_path, dpi=110)


def plot_training_curves(
    metrics: Metrics,
    output_path: str | os.PathLike | None = None,
    keys: Sequence[str] | None = DEFAULT_KEYS,
    smooth: int = 0,
    title: str | None = None,
    label: str = "run",
):
    """Plot one run: one panel per metric in `keys` (default: reward, entropy, silenced fraction) against the step.

    `metrics` is a path to `metrics.jsonl` or a list of dicts; see `plot_runs` for the other arguments.
    """
    return plot_runs({label: metrics}, keys=keys, output_path=output_path, smooth=smooth, title=title)


_SKIPPED_KEYS = {"step", "epoch", "total_flos", "train_runtime", "train_samples_per_second",
                 "train_steps_per_second", "train_loss", "num_tokens"}


def _numeric_keys(runs) -> list[str]:
    keys: list[str] = []
    for records in runs:
        for record in records:
            for key, value in record.items():
                if key in keys or key in _SKIPPED_KEYS or key.startswith("profiling/"):
                    continue
                if _number(value) is not None:
                    keys.append(key)
    return keys


def metric_filename(key: str) -> str:
    """A file-name-safe stem for a metric key: `stapo/masked_frac` -> `stapo_masked_frac`."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)


def plot_each_metric(
    runs: Mapping[str, Metrics] | Metrics,
    output_dir: str | os.PathLike,
    keys: Sequence[str] = DEFAULT_KEYS,
    smooth: int = 0,
) -> list[str]:
    """One PNG per metric, `<output_dir>/<key with / as _>.png` (e.g. `stapo_masked_frac.png`); returns the paths.

    `runs` is `{label: metrics}` or the metrics of a single run (a path or a list of dicts).
    """
    if not isinstance(runs, Mapping):
        runs = {"run": runs}
    runs = {label: load_metrics(metrics) for label, metrics in runs.items()}
    paths = []
    for key in keys:
        path = os.path.join(os.fspath(output_dir), f"{metric_filename(key)}.png")
        plot_runs(runs, keys=[key], output_path=path, smooth=smooth)
        paths.append(path)
    return paths


def plot_accuracy_before_after(
    before: Mapping[str, float],
    after: Mapping[str, float],
    output_path: str | os.PathLike | None = None,
    title: str | None = None,
):
    """Grouped bars of held-out accuracy before and after RL, one group per decoding (`{"greedy": 0.28, ...}`),
    each bar labelled with its percentage. Returns the `Figure`; `output_path` also saves it as a PNG."""
    from matplotlib.figure import Figure

    decodings = [name for name in before if name in after]
    if not decodings:
        raise ValueError(f"No decoding in both `before` ({sorted(before)}) and `after` ({sorted(after)}).")
    figure = Figure(figsize=(1.8 + 1.9 * len(decodings), 3.4), layout="constrained")
    axis = figure.subplots()
    width = 0.38
    for offset, (label, values, color) in enumerate((("before RL", before, "C7"), ("after RL", after, "C0"))):
        positions = [index + (offset - 0.5) * width for index in range(len(decodings))]
        heights = [100 * values[name] for name in decodings]
        bars = axis.bar(positions, heights, width, label=label, color=color)
        axis.bar_label(bars, labels=[f"{height:.1f}%" for height in heights], fontsize=8, padding=2)
    axis.set_xticks(range(len(decodings)), decodings)
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_ylim(0, 105)
    axis.legend(fontsize=8, loc="upper left")
    axis.grid(axis="y", alpha=0.3)
    if title:
        axis.set_title(title, fontsize=10)
    save_figure(figure, output_path)
    return figure
