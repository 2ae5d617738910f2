"""One GPU, a Qwen3-1.7B-architecture model: STAPO vs GRPO step time, tokens/s and peak memory.

Random weights from the real Qwen3-1.7B-Base configuration (no download), fp32 master weights with bf16 autocast
(TRL's `bf16=True`; `--pure-bf16` loads the weights in bf16 instead), activation (gradient) checkpointing, a
micro-batch of `--batch-size` completions of 4096 and 8192 tokens after a 512-token prompt. For each completion
length, `GRPOTrainer` and `STAPOTrainer` (S2T on) run in fresh processes, alternately (`--repeats` each), so that
neither inherits the other's allocator state; each process times `--steps` optimizer steps on a fixed batch after
`--warmup` (as `step_cost.py` does: `training_step` + clipping + AdamW), and reads `torch.cuda.max_memory_allocated`.

NOT RUN YET: this repository was measured on CPU-only machines. Run it on a GPU machine:

    python benchmarks/gpu_step.py                # writes benchmarks/results/gpu_step.json
    python benchmarks/gpu_step.py --dry-run      # what it would run (works on CPU)

Without a CUDA device it refuses (exit code 2) and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from stapo_trl.tiny import QWEN3_SIZES  # noqa: E402

# Random weights in the architecture of Qwen/Qwen3-1.7B-Base.
MODEL_SIZE = "qwen3-1.7b"
VOCAB_SIZE = QWEN3_SIZES[MODEL_SIZE]["vocab_size"]
VARIANTS = ("grpo", "stapo_s2t_on")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completion-lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1, help="completions per micro-batch (the recipes use 1)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per variant and length")
    parser.add_argument("--pure-bf16", action="store_true", help="bf16 weights (no fp32 master copy)")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the model size; run nothing")
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parameter_count() -> int:
    """Parameters of the 1.7B configuration, built on the meta device (no memory)."""
    from stapo_trl.tiny import build_qwen3

    model = build_qwen3(MODEL_SIZE, device="meta")
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters are listed once


def plan(args) -> list[tuple[str, int]]:
    runs = []
    for length in args.completion_lengths:
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            runs.extend((variant, length) for variant in order)
    return runs


def child(args, variant: str, completion_length: int) -> dict:
    import time

    from _common import build_qwen3, build_trainer, optimizer_step, random_batch

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.pure_bf16 else torch.float32
    model = build_qwen3(
        MODEL_SIZE,
        max_position_embeddings=40960,
        dtype=dtype,
        device="cuda",
        attn_implementation="sdpa",
    )
    checkpointing = not args.no_gradient_checkpointing
    trainer = build_trainer(
        variant,
        model,
        batch_size=args.batch_size,
        num_generations=args.batch_size,
        completion_length=completion_length,
        bf16=True,
        gradient_checkpointing=checkpointing,
    )
    trainer.model.to("cuda")
    if checkpointing:
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.batch_size == 1:
        batch = _single_batch(args, completion_length)
    else:  # one group of `batch_size` completions, full length
        batch = random_batch(args.batch_size, args.prompt_length, completion_length, VOCAB_SIZE,
                             num_generations=args.batch_size, device="cuda", min_completion_fraction=1.0)
    times = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer_step(trainer, batch)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    tokens = int(batch["completion_mask"].sum()) + int(batch["prompt_mask"].sum())
    return {
        "variant": variant,
        "completion_length": completion_length,
        "step_times_s": times,
        "median_step_s": median,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / median,
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
        "max_memory_reserved_bytes": torch.cuda.max_memory_reserved(),
        "gpu": torch.cuda.get_device_name(0),
    }


def _single_batch(args, completion_length):
    """Batch 1: a positive advantage, so that S2T has candidates (an all-zero advantage would skip nothing)."""
    from _common import random_batch

    batch = random_batch(2, args.prompt_length, completion_length, VOCAB_SIZE, 2, device="cuda",
                         min_completion_fraction=1.0)
    batch = {k: (v[:1] if k != "num_items_in_batch" else v) for k, v in batch.items()}
    batch["advantages"] = torch.ones(1, device="cuda")
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    return batch


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args, args.child[0], int(args.child[1]))))
        return 0
    runs = plan(args)
    print(
        f"Qwen3-1.7B architecture ({parameter_count() / 1e9:.2f}B parameters, random weights), "
        f"{'bf16 weights' if args.pure_bf16 else 'fp32 master weights + bf16 autocast'}, gradient checkpointing "
        f"{'off' if args.no_gradient_checkpointing else 'on'}, micro-batch {args.batch_size} x (prompt "
        f"{args.prompt_length} + completion {args.completion_lengths}); {len(runs)} fresh processes: {runs}"
    )
    if args.dry_run:
        return 0
    if not torch.cuda.is_available():
        print("No CUDA device: this benchmark measures a GPU step and has not been run here. Nothing was run.")
        return 2
    from _common import run_python, summary, write_result

    results = []
    for variant, length in runs:
        out = run_python([str(Path(__file__).resolve()), *argv, "--child", variant, str(length)])
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"{variant:14s} T={length}: {r['median_step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, peak "
            f"{r['max_memory_allocated_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )
    table = {}
    for length in args.completion_lengths:
        entry = {}
        for variant in VARIANTS:
            rows = [r for r in results if r["variant"] == variant and r["completion_length"] == length]
            entry[variant] = {
                "step_s": summary([r["median_step_s"] for r in rows]),
                "tokens_per_s": summary([r["tokens_per_s"] for r in rows]),
                "peak_allocated_gib": max(r["max_memory_allocated_bytes"] for r in rows) / 2**30,
            }
        entry["step_time_ratio"] = entry["stapo_s2t_on"]["step_s"]["median"] / entry["grpo"]["step_s"]["median"]
        entry["peak_memory_ratio"] = entry["stapo_s2t_on"]["peak_allocated_gib"] / entry["grpo"]["peak_allocated_gib"]
        table[length] = entry
        print(f"T={length}: step-time ratio STAPO/GRPO {entry['step_time_ratio']:.4f}, peak-memory ratio "
              f"{entry['peak_memory_ratio']:.4f}")
    write_result("gpu_step", {"settings": vars(args), "runs": results, "summary": table}, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
