"""The paper in miniature at its operating point: STAPO, JustRL, 20-Entropy, GRPO on a reasoning task, 3 seeds.

The task (`reasoning_task.py`): word problems answered by a 30-60-token reasoning chain whose wording varies at random
and does not affect the reward (only the `\\boxed{}` answer does), a ~1k-token byte-level BPE vocabulary trained on
the task's text (a long tail of tokens irrelevant at any given position), and a supervised warm start stopped at a
held-out greedy accuracy of 30%. The warm start runs once (seed 0; 300 supervised steps, 275 s here) and every
run of every seed starts from it: the seeds vary the RL run (sampling, data order), not the starting model, which
a budget of one shared 2-core machine did not allow three times over.

**The one setting of all runs, chosen before any RL result was seen**, and why:

- the paper's objective and thresholds: `loss_type="dapo"`, clip 0.2 / 0.28, `beta=0` (no KL), gradient clipping 1.0,
  tau_p = 0.002, q = 0.75, `spurious_stats_scope="step"` (tau_h and the kept-token denominator over the whole
  optimizer step), binary reward +1 / -1, rollout temperature 1.0, top-p 1.0: STAPOConfig's defaults, i.e. the
  paper's, so that the question "does tau_p = 0.002 find spurious tokens here" is asked at the paper's values;
- several updates per rollout, as in the paper (4): 16 prompts x 8 completions per rollout batch, 4 optimizer updates
  of 4 prompts x 8 completions each, each in 2 micro-batches of 16 (`per_device_train_batch_size=16`,
  `gradient_accumulation_steps=2`, `steps_per_generation=8`), so that the ratio drifts away from 1 and clip-higher
  acts, and the step scope spans more than one micro-batch;
- AdamW at a constant 1e-4 after 10 warm-up steps: constant as in the paper; 1e-4 is the rate the addition demo
  measured for a model of this size (the paper's 1e-6 is for 1.7B-14B models and would not move a 1M-parameter model
  in a few hundred updates); weight decay 0.1 as in the paper;
- each method's preset from `stapo_trl.launch.METHOD_PRESETS` on top, nothing else per method (GRPO: per-sequence
  loss, symmetric clip 0.2, KL 0.04 to the warm start; 20-Entropy: gradient on the top-20% entropy tokens,
  renormalised);
- the cheap ablations of the paper on top of STAPO: tau_p = 0.2 (`stapo_tau0.2`) and silencing every low-probability
  positive token, i.e. no entropy condition (`stapo_all`, q = 1.0, which `STAPOConfig` defines as "silence every
  candidate").

    python benchmarks/miniature_reasoning.py --short      # 2 variants x 1 seed x 20 updates, a few minutes
    python benchmarks/miniature_reasoning.py --steps 120 --ablation-seeds 0   # the study of the README

Every run logs TRL's and STAPO's metrics each update and the held-out greedy accuracy (200 problems) every
`--eval-every` updates; `--plot-only` redraws from the runs on disk. Runs go under `--runs-dir` (not tracked); the
summary JSON (every curve) and the figure under `benchmarks/results/`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, RESULTS_DIR, load_average, write_result
from miniature import held_out_accuracy_callback, read_jsonl, run_series

METHOD_LABELS = {
    "stapo": "STAPO",
    "justrl": "JustRL",
    "entropy20": "20-Entropy",
    "grpo": "GRPO",
    "stapo_tau0.2": "STAPO, tau_p=0.2 (ablation)",
    "stapo_all": "STAPO, all candidates silenced (ablation)",
}
METHODS = ("stapo", "justrl", "entropy20", "grpo")
ABLATIONS = {"stapo_tau0.2": {"spurious_prob_threshold": 0.2}, "stapo_all": {"spurious_entropy_quantile": 1.0}}
PLOT_KEYS = (
    ("stapo/entropy_p50", "median entropy, all completion tokens (nats)"),
    ("entropy", "mean entropy, all completion tokens (nats)"),
    ("stapo/masked_frac", "silenced tokens (fraction of completion tokens)"),
    ("stapo/candidate_frac", "S2T candidates: A > 0 and p < tau_p (fraction)"),
    ("grad_norm", "gradient norm (before clipping)"),
    ("reward", "mean reward (+1 / -1)"),
    ("heldout_greedy_accuracy", "held-out greedy accuracy (200 problems)"),
    ("completions/mean_length", "mean completion length (tokens)"),
)
SUMMARY_KEYS = ("entropy", "stapo/entropy_p50", "stapo/masked_frac", "stapo/masked_tokens", "stapo/candidate_frac",
                "grad_norm", "reward", "completions/mean_length")
WARM_START_SEED = 0
WARM_START = dict(target_accuracy=0.3, max_steps=1500, eval_every=50, learning_rate=1e-3, batch_size=64)


def rl_settings(output_dir: str, seed: int, steps: int) -> dict:
    """The `STAPOConfig` fields shared by every variant (see the module docstring for the reasons)."""
    from reasoning_task import MAX_COMPLETION_LENGTH

    return dict(
        output_dir=output_dir, seed=seed, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True,
        loss_type="dapo", beta=0.0, epsilon=0.2, epsilon_high=0.28, max_grad_norm=1.0,
        silence_spurious_tokens=True, spurious_prob_threshold=0.002, spurious_entropy_quantile=0.75,
        spurious_stats_scope="step", spurious_token_log_steps=10, spurious_token_log_max=16,
        num_generations=8, per_device_train_batch_size=16, gradient_accumulation_steps=2, steps_per_generation=8,
        max_completion_length=MAX_COMPLETION_LENGTH, temperature=1.0, top_p=1.0,
        learning_rate=1e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=10, weight_decay=0.1,
        max_steps=steps, logging_steps=1, save_strategy="no",
        model_init_kwargs={"dtype": "float32"},
    )


def variant_overrides(variant: str) -> dict:
    from stapo_trl.launch import METHOD_PRESETS

    if variant in METHOD_PRESETS:
        return dict(METHOD_PRESETS[variant])
    return {**METHOD_PRESETS["stapo"], **ABLATIONS[variant]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHOD_LABELS))
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS))
    parser.add_argument("--ablation-seeds", type=int, nargs="*", default=None, help="default: --seeds")
    parser.add_argument("--steps", type=int, default=120, help="optimizer updates per run")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out accuracy every this many updates")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--short", action="store_true", help="STAPO and JustRL, seed 0, 20 updates")
    parser.add_argument("--runs-dir", default=str(REPO_ROOT / "outputs" / "miniature_reasoning"))
    parser.add_argument("--results-name", default="miniature_reasoning")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="where the JSON and the figure go")
    parser.add_argument("--force", action="store_true", help="rerun finished runs")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("SEED", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--warm-worker", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.short:
        args.seeds, args.methods, args.ablations, args.steps = [0], ["stapo", "justrl"], [], 20
        args.runs_dir = str(Path(args.runs_dir).with_name(Path(args.runs_dir).name + "_short"))
        args.results_name += "_short"
    if args.ablation_seeds is None:
        args.ablation_seeds = list(args.seeds)
    return args


def planned_runs(args) -> list[tuple[int, str]]:
    runs = [(seed, method) for seed in args.seeds for method in args.methods]
    return runs + [(seed, ablation) for seed in args.ablation_seeds for ablation in args.ablations]


# --------------------------------------------------------------------------------------------------------------------
# Workers: the warm start of a seed, one RL run
# --------------------------------------------------------------------------------------------------------------------


def warm_dir(args) -> Path:
    return Path(args.runs_dir) / "warm_start"


def run_warm_worker(args, seed: int) -> None:
    import torch
    from transformers import set_seed

    import reasoning_task as task

    torch.set_num_threads(1)
    set_seed(seed)
    directory = warm_dir(args)
    tokenizer = task.build_reasoning_tokenizer(task.task_corpus(seed))
    model = task.build_reasoning_model(tokenizer, seed=seed)
    train, held_out = task.split_problems(seed)
    info = {"seed": seed, "vocab_size": len(tokenizer), "num_parameters": sum(p.numel() for p in model.parameters()),
            "settings": WARM_START}
    info["warm_start"] = task.warm_start(model, tokenizer, train, held_out, str(directory / "sft"), seed=seed,
                                         **WARM_START)
    info["heldout_greedy_accuracy"] = task.greedy_accuracy(model, tokenizer, held_out)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "warm_start.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info), flush=True)


def run_worker(args, seed: int, variant: str) -> None:
    import torch
    from transformers import AutoTokenizer

    import reasoning_task as task
    from stapo_trl import STAPOConfig, STAPOTrainer
    from stapo_trl.demo import DemoMetricsCallback

    torch.set_num_threads(1)
    warm = warm_dir(args)
    run_dir = Path(args.runs_dir) / f"seed{seed}" / variant
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(warm)
    train, held_out = task.split_problems(WARM_START_SEED)
    settings = {**rl_settings(str(run_dir), seed, args.steps), **variant_overrides(variant)}
    accuracy_path = run_dir / "heldout_accuracy.jsonl"

    accuracy = held_out_accuracy_callback(
        accuracy_path, lambda model: task.greedy_accuracy(model, tokenizer, held_out), args.eval_every
    )
    trainer = STAPOTrainer(
        model=str(warm),
        reward_funcs=task.boxed_reward,
        args=STAPOConfig(**settings),
        train_dataset=task.to_dataset(train),
        processing_class=tokenizer,
        callbacks=[DemoMetricsCallback(run_dir), accuracy],
    )
    start = time.perf_counter()
    trainer.train()
    summary = {
        "seed": seed, "variant": variant, "overrides": variant_overrides(variant),
        "settings": {k: v for k, v in settings.items() if k != "output_dir"},
        "train_seconds": round(time.perf_counter() - start, 1), "load_average_end": load_average(),
    }
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    print(f"[seed {seed}] {variant}: done in {summary['train_seconds']} s", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Aggregation, figure
# --------------------------------------------------------------------------------------------------------------------


def silenced_tokens(run_dir: Path) -> list[dict]:
    """The silenced tokens the trainer recorded (every 10th update), as `{step, token, context, prob, entropy}`."""
    return [{k: r.get(k) for k in ("step", "token", "context", "prob", "entropy")}
            for r in read_jsonl(run_dir / "spurious_tokens.jsonl")]


def aggregate(args) -> dict:
    runs = {}
    for seed, variant in planned_runs(args):
        run_dir = Path(args.runs_dir) / f"seed{seed}" / variant
        if (run_dir / "run.json").exists():
            runs[(variant, seed)] = {"series": run_series(run_dir), "run": json.loads((run_dir / "run.json").read_text()),
                                     "silenced_examples": silenced_tokens(run_dir)[:24]}
    table = {}
    for variant in METHOD_LABELS:
        seeds = sorted(seed for v, seed in runs if v == variant)
        if not seeds:
            continue
        entry = {"seeds": seeds, "train_seconds": [runs[(variant, s)]["run"]["train_seconds"] for s in seeds]}
        accuracy = [runs[(variant, s)]["series"].get("heldout_greedy_accuracy", {}) for s in seeds]
        entry["heldout_accuracy_start"] = [a[min(a)] for a in accuracy if a]
        entry["heldout_accuracy_end"] = [a[max(a)] for a in accuracy if a]
        for key in SUMMARY_KEYS:
            per_seed = []
            for seed in seeds:
                values = runs[(variant, seed)]["series"].get(key, {})
                if not values:
                    continue
                steps = sorted(values)
                tail = steps[-max(1, len(steps) // 10):]
                per_seed.append({"first_10pct": statistics.mean(values[s] for s in steps[: max(1, len(steps) // 10)]),
                                 "mean_all_steps": statistics.mean(values.values()),
                                 "last_10pct": statistics.mean(values[s] for s in tail), "max": max(values.values())})
            entry[key] = per_seed
        masked = [runs[(variant, s)]["series"].get("stapo/masked_tokens", {}) for s in seeds]
        entry["share_of_steps_with_silenced_tokens"] = [
            sum(v > 0 for v in m.values()) / len(m) for m in masked if m
        ]
        table[variant] = entry
    return {"runs": runs, "table": table}


def markdown_table(table: dict) -> str:
    """The README's table: per variant, held-out accuracy per seed, and each curve's first / last 10% of updates."""

    def mean_of(entry, key, part):
        values = [seed[part] for seed in entry.get(key, [])]
        return statistics.mean(values) if values else float("nan")

    def first_last(entry, key, digits=3):
        return f"{mean_of(entry, key, 'first_10pct'):.{digits}f} -> {mean_of(entry, key, 'last_10pct'):.{digits}f}"

    lines = [
        "| variant | held-out greedy accuracy, start -> end, per seed | mean end | entropy, mean (first -> last 10%) "
        "| entropy, median | silenced fraction (mean) | updates with tokens silenced | candidate fraction (mean) "
        "| grad norm | reward | wall time per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, entry in table.items():
        accuracy = " / ".join(f"{100 * a:.1f} -> {100 * b:.1f}" for a, b in
                              zip(entry["heldout_accuracy_start"], entry["heldout_accuracy_end"]))
        end = statistics.mean(entry["heldout_accuracy_end"]) if entry["heldout_accuracy_end"] else float("nan")
        steps_share = entry["share_of_steps_with_silenced_tokens"]
        lines.append(
            f"| {METHOD_LABELS[variant]} | {accuracy} | {100 * end:.1f}% | {first_last(entry, 'entropy')} "
            f"| {first_last(entry, 'stapo/entropy_p50')} | {100 * mean_of(entry, 'stapo/masked_frac', 'mean_all_steps'):.3f}% "
            f"| {100 * statistics.mean(steps_share):.0f}% | "
            f"{100 * mean_of(entry, 'stapo/candidate_frac', 'mean_all_steps'):.3f}% "
            f"| {first_last(entry, 'grad_norm', 2)} | {first_last(entry, 'reward', 2)} "
            f"| {min(entry['train_seconds']):.0f}-{max(entry['train_seconds']):.0f} s |"
        )
    return "\n".join(lines)


def plot(args, aggregated, output_path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(18, 8.5), layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    variants = [v for v in METHOD_LABELS if any(run_variant == v for run_variant, _ in aggregated["runs"])]
    for axis, (key, title) in zip(axes, PLOT_KEYS):
        for index, variant in enumerate(variants):
            curves = [run["series"].get(key, {}) for (v, _), run in aggregated["runs"].items() if v == variant]
            curves = [curve for curve in curves if curve]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(curve) for curve in curves)))
            mean = [statistics.mean(curve[s] for curve in curves) for s in steps]
            style = dict(color=f"C{index}", linewidth=1.2 if variant in METHODS else 0.9,
                         linestyle="-" if variant in METHODS else "--")
            axis.plot(steps, mean, marker="o" if key == "heldout_greedy_accuracy" else None, markersize=3,
                      label=f"{METHOD_LABELS[variant]} (n={len(curves)})", **style)
            if len(curves) > 1:
                low = [min(curve[s] for curve in curves) for s in steps]
                high = [max(curve[s] for curve in curves) for s in steps]
                axis.fill_between(steps, low, high, color=f"C{index}", alpha=0.12, linewidth=0)
        if key in ("stapo/masked_frac", "stapo/candidate_frac", "grad_norm"):
            axis.set_yscale("symlog", linthresh=1e-4 if key != "grad_norm" else 0.1)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("optimizer update")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("Miniature reasoning task (~1k-token BPE, 30-60-token chains), tau_p = 0.002, q = 0.75: "
                    "mean over seeds, band = min-max", fontsize=11)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=100)
    print(f"wrote {output_path}", flush=True)


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def run_jobs(args, jobs: list[tuple[list[str], str]]) -> None:
    """Run this script with each job's worker arguments in its own process, `--jobs` at a time; log per job."""
    base = [a for a in sys.argv[1:] if a not in ("--force",)]

    def launch(job):
        worker_args, log_name = job
        log_path = Path(args.runs_dir) / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log_path, "w") as log:
            code = subprocess.run([sys.executable, str(Path(__file__).resolve()), *base, *worker_args],
                                  cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        status = "done" if code == 0 else f"FAILED ({code}), see {log_path}"
        print(f"{log_name}: {status} after {time.perf_counter() - start:.0f} s, load {load_average()}", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(launch, jobs))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.warm_worker is not None:
        return run_warm_worker(args, args.warm_worker)
    if args.worker:
        return run_worker(args, int(args.worker[0]), args.worker[1])
    start = time.perf_counter()
    load_start = load_average()
    if not args.plot_only:
        if args.force or not (warm_dir(args) / "warm_start.json").exists():
            run_jobs(args, [(["--warm-worker", str(WARM_START_SEED)], "warm_start.log")])
        run_jobs(args, [(["--worker", str(s), v], f"seed{s}/{v}.log") for s, v in planned_runs(args)
                        if args.force or not (Path(args.runs_dir) / f"seed{s}" / v / "run.json").exists()])
    aggregated = aggregate(args)
    figure_path = Path(args.results_dir) / f"{args.results_name}.png"
    plot(args, aggregated, figure_path)
    warm_path = warm_dir(args) / "warm_start.json"
    warm = json.loads(warm_path.read_text()) if warm_path.exists() else None
    for variant, entry in aggregated["table"].items():
        print(f"{METHOD_LABELS[variant]}: {json.dumps(entry)}", flush=True)
    print(markdown_table(aggregated["table"]), flush=True)
    write_result(args.results_name, {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "warm_worker")},
        "rl_settings": {k: v for k, v in rl_settings("", 0, args.steps).items() if k not in ("output_dir", "seed")},
        "variant_overrides": {v: variant_overrides(v) for v in METHOD_LABELS},
        "warm_start": warm,
        "summary": aggregated["table"],
        "curves": {f"{v}/seed{s}": {key: run["series"].get(key, {}) for key, _ in PLOT_KEYS + (
            ("stapo/masked_tokens", ""), ("stapo/entropy_threshold", ""), ("clip_ratio/region_mean", ""))}
            for (v, s), run in aggregated["runs"].items()},
        "silenced_examples": {f"{v}/seed{s}": run["silenced_examples"] for (v, s), run in aggregated["runs"].items()},
        "figure": figure_path.name,
        "load_average_start": load_start,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }, output=Path(args.results_dir) / f"{args.results_name}.json")


if __name__ == "__main__":
    main()
