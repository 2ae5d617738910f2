"""The paper in miniature: STAPO, JustRL, 20-Entropy and GRPO on the CPU demo task, several seeds each.

For every seed the demo's supervised warm start (`stapo_trl.demo.prepare_demo`) runs once, and every method starts
its RL run from that same warm-started model, so the methods differ only by their settings: the demo's RL settings
(`stapo_trl.demo.demo_settings`) with each method's preset from `stapo_trl.launch.METHOD_PRESETS` on top. Every run
logs TRL's and STAPO's metrics each step (`DemoMetricsCallback`) and the held-out greedy accuracy every
`--eval-every` steps. The figure draws entropy (TRL's mean over the loss tokens, and the median over all completion
tokens, which stays comparable when a method drops tokens from the loss), the silenced and candidate fractions,
reward and held-out accuracy per step on shared axes, mean over seeds with the min-max band.

    python benchmarks/miniature.py                                   # 4 methods x 3 seeds (see README for time)
    python benchmarks/miniature.py --seeds 0 --methods stapo grpo --steps 30   # a few minutes

Runs go under `--runs-dir` (default `outputs/miniature`, not tracked); the summary JSON and the figures under
`benchmarks/results/`. A finished run is not rerun unless `--force`; `--plot-only` redraws from the runs on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, RESULTS_DIR, load_average, write_result

METHOD_LABELS = {"stapo": "STAPO", "justrl": "JustRL", "entropy20": "20-Entropy", "grpo": "GRPO"}
PLOT_KEYS = (
    ("entropy", "mean entropy over all completion tokens (nats)"),
    ("stapo/entropy_p50", "median entropy over all completion tokens (nats)"),
    ("stapo/masked_frac", "silenced tokens (fraction)"),
    ("stapo/candidate_frac", "S2T candidates: A > 0 and p < tau_p (fraction)"),
    ("reward", "mean reward"),
    ("heldout_greedy_accuracy", "held-out greedy accuracy"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_LABELS), choices=list(METHOD_LABELS))
    parser.add_argument("--steps", type=int, default=None, help="RL optimizer steps (default: the demo's max_steps)")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out accuracy every this many steps")
    parser.add_argument("--eval-limit", type=int, default=250, help="held-out problems per evaluation")
    parser.add_argument("--jobs", type=int, default=1, help="RL runs in parallel (each uses --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs-dir", default=str(REPO_ROOT / "outputs" / "miniature"))
    parser.add_argument("--results-name", default="miniature", help="name of the result JSON and figure")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("SEED", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--warm-worker", type=int, metavar="SEED", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------------------------------------------------
# Warm start (once per seed) and one RL run (in its own process)
# --------------------------------------------------------------------------------------------------------------------


def warm_start_dir(args, seed: int) -> Path:
    return Path(args.runs_dir) / f"seed{seed}" / "warm_start"


def ensure_warm_start(args, seed: int) -> dict:
    """Run `prepare_demo` for `seed` once and save the warm-started model where the RL runs load it."""
    import torch

    from stapo_trl.demo import prepare_demo

    directory = warm_start_dir(args, seed)
    info_path = directory / "warm_start.json"
    if (directory / "config.json").exists() and info_path.exists() and not args.force:
        return json.loads(info_path.read_text())
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer, _, _, info = prepare_demo(output_dir=directory, seed=seed, progress=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info["wall_seconds"] = round(time.perf_counter() - start, 1)
    info_path.write_text(json.dumps(info, indent=2))
    print(f"[seed {seed}] warm start: {info.get('accuracy_before_rl')} in {info['wall_seconds']} s", flush=True)
    return info


def _accuracy_reward():
    from stapo_trl.rewards import extract_boxed_answer

    def accuracy_reward(completions, answer, **kwargs):
        """1 when the last boxed integer equals the answer, else 0 (the demo's reward)."""
        rewards = []
        for completion, gold in zip(completions, answer, strict=True):
            boxed = extract_boxed_answer(completion)
            try:
                rewards.append(1.0 if boxed is not None and int(boxed.strip()) == int(gold) else 0.0)
            except ValueError:
                rewards.append(0.0)
        return rewards

    return accuracy_reward


def held_out_accuracy_callback(path: Path, accuracy_of, eval_every: int):
    """A `TrainerCallback` writing `accuracy_of(model)` to `path` as JSON lines `{"step", "heldout_greedy_accuracy"}`:
    before the first step, every `eval_every` steps and at the last one (both studies use it)."""
    from transformers import TrainerCallback

    class HeldOutAccuracy(TrainerCallback):
        def _evaluate(self, model, step):
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "heldout_greedy_accuracy": accuracy_of(model)}) + "\n")

        def on_train_begin(self, train_args, state, control, model=None, **kwargs):
            path.write_text("")
            self._evaluate(model, 0)

        def on_step_end(self, train_args, state, control, model=None, **kwargs):
            if state.global_step % eval_every == 0 or state.global_step == state.max_steps:
                self._evaluate(model, state.global_step)

    return HeldOutAccuracy()


def run_worker(args, seed: int, method: str) -> None:
    import torch
    from transformers import AutoTokenizer

    from stapo_trl import STAPOConfig, STAPOTrainer
    from stapo_trl.demo import DemoMetricsCallback, demo_settings, greedy_accuracy, make_demo_datasets
    from stapo_trl.launch import METHOD_PRESETS

    torch.set_num_threads(args.threads)
    warm = warm_start_dir(args, seed)
    info = json.loads((warm / "warm_start.json").read_text())
    run_dir = Path(args.runs_dir) / f"seed{seed}" / method
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(warm)
    train_ds, eval_ds = make_demo_datasets(seed=seed, num_eval=info["num_eval"])
    overrides = dict(output_dir=str(run_dir), seed=seed, disable_tqdm=True, **METHOD_PRESETS[method])
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    settings = demo_settings(**overrides)
    # Load the warm start in fp32 (the demo's dtype); GRPO's reference model (beta > 0) is loaded the same way.
    settings["model_init_kwargs"] = {"dtype": "float32"}
    accuracy_path = run_dir / "heldout_accuracy.jsonl"

    accuracy_callback = held_out_accuracy_callback(
        accuracy_path, lambda model: greedy_accuracy(model, tokenizer, eval_ds, limit=args.eval_limit), args.eval_every
    )
    trainer = STAPOTrainer(
        model=str(warm),
        reward_funcs=_accuracy_reward(),
        args=STAPOConfig(**settings),
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=[DemoMetricsCallback(run_dir), accuracy_callback],
    )
    start = time.perf_counter()
    trainer.train()
    summary = {
        "seed": seed,
        "method": method,
        "preset": METHOD_PRESETS[method],
        "max_steps": settings["max_steps"],
        "settings": {k: settings.get(k) for k in (
            "loss_type", "beta", "epsilon", "epsilon_high", "learning_rate", "lr_scheduler_type", "temperature",
            "num_generations", "per_device_train_batch_size", "silence_spurious_tokens", "spurious_prob_threshold",
            "spurious_entropy_quantile", "spurious_entropy_threshold", "top_entropy_quantile",
            "renormalize_entropy_mask")},
        "train_seconds": round(time.perf_counter() - start, 1),
        "load_average_end": load_average(),
    }
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    print(f"[seed {seed}] {method}: done in {summary['train_seconds']} s", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and figures
# --------------------------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """`{metric: {step: value}}` of one run (the training logs plus the held-out accuracy)."""
    series: dict[str, dict[int, float]] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl") + read_jsonl(run_dir / "heldout_accuracy.jsonl"):
        step = record.get("step")
        for key, value in record.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)) or value != value:
                continue
            series.setdefault(key, {})[int(step)] = float(value)
    return series


def aggregate(args) -> dict:
    runs = {}
    for method in args.methods:
        for seed in args.seeds:
            run_dir = Path(args.runs_dir) / f"seed{seed}" / method
            if (run_dir / "run.json").exists():
                runs[(method, seed)] = {"series": run_series(run_dir), "run": json.loads((run_dir / "run.json").read_text())}
    table = {}
    for method in args.methods:
        seeds = [seed for seed in args.seeds if (method, seed) in runs]
        if not seeds:
            continue
        entry = {"seeds": seeds}
        finals = []
        for seed in seeds:
            accuracy = runs[(method, seed)]["series"].get("heldout_greedy_accuracy", {})
            if accuracy:
                finals.append((accuracy[min(accuracy)], accuracy[max(accuracy)]))
        if finals:
            entry["heldout_accuracy_start"] = [a for a, _ in finals]
            entry["heldout_accuracy_end"] = [b for _, b in finals]
            entry["heldout_accuracy_end_mean"] = statistics.mean(b for _, b in finals)
        for key in ("entropy", "stapo/entropy_p50", "stapo/masked_frac", "stapo/candidate_frac", "reward"):
            per_seed = []
            for seed in seeds:
                values = runs[(method, seed)]["series"].get(key, {})
                if values:
                    steps = sorted(values)
                    last = steps[-max(1, len(steps) // 10) :]  # the last 10% of the steps
                    per_seed.append({"mean_all_steps": statistics.mean(values.values()),
                                     "mean_last_10pct": statistics.mean(values[s] for s in last),
                                     "max": max(values.values())})
            entry[key] = per_seed
        entry["train_seconds"] = [runs[(method, seed)]["run"]["train_seconds"] for seed in seeds]
        table[method] = entry
    return {"runs": runs, "table": table}


def plot(args, aggregated, output_path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 8), layout="constrained")
    axes = figure.subplots(2, 3).ravel()
    for axis, (key, title) in zip(axes, PLOT_KEYS):
        for index, method in enumerate(args.methods):
            seeds = [seed for seed in args.seeds if (method, seed) in aggregated["runs"]]
            curves = [aggregated["runs"][(method, seed)]["series"].get(key, {}) for seed in seeds]
            curves = [curve for curve in curves if curve]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(curve) for curve in curves)))
            mean = [statistics.mean(curve[s] for curve in curves) for s in steps]
            low = [min(curve[s] for curve in curves) for s in steps]
            high = [max(curve[s] for curve in curves) for s in steps]
            color = f"C{index}"
            marker = "o" if key == "heldout_greedy_accuracy" else None
            axis.plot(steps, mean, color=color, linewidth=1.5, marker=marker, markersize=3,
                      label=f"{METHOD_LABELS[method]} (n={len(curves)})")
            if len(curves) > 1:
                axis.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(
        f"CPU demo (addition, ~1M-parameter Qwen3): mean over seeds {args.seeds}, band = min-max", fontsize=11
    )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=110)
    print(f"wrote {output_path}")


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def run_pool(jobs, worker_argv, args) -> None:
    """Run `miniature.py <worker_argv> <extra>` for every job, `args.jobs` processes at a time."""
    pending = list(jobs)
    running = []
    while pending or running:
        while pending and len(running) < args.jobs:
            extra, log_name, label = pending.pop(0)
            log_path = Path(args.runs_dir) / log_name
            log_path.parent.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), *worker_argv, *extra],
                cwd=REPO_ROOT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
            )
            running.append((process, label, time.perf_counter()))
            print(f"started {label} (pid {process.pid})", flush=True)
        time.sleep(2)
        for entry in list(running):
            process, label, started = entry
            if process.poll() is not None:
                running.remove(entry)
                status = "done" if process.returncode == 0 else f"FAILED ({process.returncode}), see its log"
                print(f"{label}: {status} after {time.perf_counter() - started:.0f} s", flush=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        run_worker(args, int(args.worker[0]), args.worker[1])
        return
    if args.warm_worker is not None:
        ensure_warm_start(args, args.warm_worker)
        return
    start = time.perf_counter()
    if not args.plot_only:
        worker_argv = [a for a in argv if a != "--force"]
        # Phase 1: the warm starts (one per seed), then phase 2: the RL runs; each in its own process, `--jobs` at once.
        warm_jobs = [
            (["--warm-worker", str(seed)], f"seed{seed}/warm_start.log", f"seed {seed} warm start")
            for seed in args.seeds
            if args.force or not (warm_start_dir(args, seed) / "warm_start.json").exists()
        ]
        rl_jobs = [
            (["--worker", str(seed), method], f"seed{seed}/{method}.log", f"seed {seed} {method}")
            for seed in args.seeds
            for method in args.methods
            if args.force or not (Path(args.runs_dir) / f"seed{seed}" / method / "run.json").exists()
        ]
        for jobs in (warm_jobs, rl_jobs):
            run_pool(jobs, worker_argv, args)
    aggregated = aggregate(args)
    figure_path = RESULTS_DIR / f"{args.results_name}.png"
    plot(args, aggregated, figure_path)
    warm = {}
    for seed in args.seeds:
        info_path = warm_start_dir(args, seed) / "warm_start.json"
        if info_path.exists():
            info = json.loads(info_path.read_text())
            warm[seed] = {"accuracy_before_rl": info.get("accuracy_before_rl"), "warm_start": info.get("warm_start")}
    for method, entry in aggregated["table"].items():
        print(f"{METHOD_LABELS[method]:10s} {json.dumps(entry)}")
    write_result(
        args.results_name,
        {
            "settings": {k: v for k, v in vars(args).items() if k != "worker"},
            "warm_start": warm,
            "summary": aggregated["table"],
            "curves": {
                f"{method}/seed{seed}": {key: run["series"].get(key, {}) for key, _ in PLOT_KEYS}
                for (method, seed), run in aggregated["runs"].items()
            },
            "figure": str(figure_path.relative_to(REPO_ROOT)),
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
    )


if __name__ == "__main__":
    main()
