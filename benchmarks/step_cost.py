"""Step cost of `STAPOTrainer` (S2T on and off) against TRL's `GRPOTrainer`, measured in one run.

What is timed, and why: an RL step is generation + scoring + the policy update. Generation dominates and is the same
code in both trainers (STAPO does not touch it), and its length varies from run to run, so timing `trainer.train()`
would mostly measure sampling noise. This script times the part STAPO changes: the optimizer step on a fixed,
prepared batch, exactly as `Trainer.training_step` runs it (`compute_loss` with the fused log-prob/entropy forward,
the S2T mask, the loss, `backward`), followed by gradient clipping, AdamW and `zero_grad`. Each trainer owns an
identical copy of the model and sees the same batch at every step; the trainers take turns step by step, in a
rotating order, so that background load on a shared machine hits all of them alike. The figure is the median over
the timed rounds, after warm-up rounds.

Also measured, on untimed steps:
- forward passes per step (a pre-hook counts calls of the decoder backbone, for each trainer on the same step);
- the largest tensor created by STAPO's own code (a `TorchDispatchMode` records the shape of every tensor produced
  during the step and attributes it to a region: STAPO's code in `STAPOTrainer._compute_loss` and `_plan_step`, or
  the model's calls (the parent's `_get_per_token_logps_and_entropies`, the step scope's `_score_call`) and the
  parent's `_compute_loss` / `get_high_entropy_mask`, or backward). The check fails
  if STAPO's own code produces a tensor of `numel >= B*T*V`, and also compares, shape by shape, every tensor larger
  than a per-token `(B, T)` one produced over the whole step by `STAPOTrainer` and by `GRPOTrainer`;
- peak memory: on CPU, the peak of torch's CPU allocator during one step (allocation events of `torch.profiler`,
  net of what was allocated before the step) and, in fresh processes per trainer (interleaved, repeated), the
  process peak RSS; on GPU, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`.

    python benchmarks/step_cost.py                 # CPU defaults (vocab 32768), about 4-6 minutes on 2 cores
    python benchmarks/step_cost.py --quick         # a smaller model and fewer rounds, about a minute
"""

from __future__ import annotations

import argparse
import collections
import copy
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _common import (
    VARIANT_LABELS,
    VARIANTS,
    build_qwen3,
    build_trainer,
    clone_batch,
    current_rss_bytes,
    load_average,
    optimizer_step,
    peak_rss_bytes,
    random_batch,
    summary,
    synchronize,
    write_result,
)

CPU_TARGET = 0.03
GPU_TARGET = 0.01
MEMORY_TARGET = 0.01


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="completions per micro-batch (B)")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--completion-length", type=int, default=64, help="T")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (every trainer steps once per round)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds")
    parser.add_argument("--rss-repeats", type=int, default=1, help="fresh processes per trainer for the peak RSS")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; default 1 on CPU (on a shared 2-core machine, one thread gave steadier and faster steps "
        "than two), torch's choice on GPU",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default on GPU)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small model and few rounds (a smoke run)")
    parser.add_argument("--output", default=None, help="result JSON (default benchmarks/results/step_cost_<device>.json)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab_size, args.hidden_size, args.layers, args.intermediate_size = 8192, 128, 2, 512
        args.completion_length, args.warmup, args.rounds = 32, 1, 4
    if args.threads is None and not torch.cuda.is_available():
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def base_model(args):
    return build_qwen3(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=max(4096, args.prompt_length + args.completion_length),
    )


def make_trainer(args, variant, model):
    bf16 = args.bf16 or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    trainer = build_trainer(
        variant,
        model,
        batch_size=args.batch_size,
        num_generations=args.num_generations,
        completion_length=args.completion_length,
        bf16=bf16,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer.model.to(device())
    if args.gradient_checkpointing:
        trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return trainer


def make_batch(args):
    return random_batch(
        args.batch_size,
        args.prompt_length,
        args.completion_length,
        args.vocab_size,
        args.num_generations,
        seed=0,
        device=device(),
    )


# --------------------------------------------------------------------------------------------------------------------
# Forward-pass count
# --------------------------------------------------------------------------------------------------------------------


def count_forward_passes(trainer, batch) -> dict:
    """Calls of the whole model and of its decoder backbone during one optimizer step."""
    counts = collections.Counter()
    model = trainer.model
    handles = [
        model.register_forward_pre_hook(lambda *_: counts.update(["model"])),
        model.get_decoder().register_forward_pre_hook(lambda *_: counts.update(["backbone"])),
    ]
    try:
        optimizer_step(trainer, batch)
        synchronize()
    finally:
        for handle in handles:
            handle.remove()
    return {"model_calls": counts["model"], "backbone_calls": counts["backbone"]}


# --------------------------------------------------------------------------------------------------------------------
# Tensor shapes by region
# --------------------------------------------------------------------------------------------------------------------


class _Regions:
    """Depth counters telling whose code is running: STAPO's `_compute_loss` body or the parent's methods."""

    def __init__(self):
        self.stapo = 0
        self.parent = 0

    def current(self) -> str:
        if self.parent > 0:
            return "parent"
        if self.stapo > 0:
            return "stapo_own"
        return "outside_loss"  # backward, clipping, optimizer


def _wrap(owner, name, regions, attribute):
    original = owner.__dict__[name]

    def wrapped(*args, **kwargs):
        setattr(regions, attribute, getattr(regions, attribute) + 1)
        try:
            return original(*args, **kwargs)
        finally:
            setattr(regions, attribute, getattr(regions, attribute) - 1)

    setattr(owner, name, wrapped)
    return lambda: setattr(owner, name, original)


class OwnTimeMeter:
    """Wall time spent in STAPO's own code: `STAPOTrainer._compute_loss` minus the parent's methods it calls.

    The parent's `_get_per_token_logps_and_entropies` (the fused forward) and `_compute_loss` (TRL's loss) run inside
    STAPO's `_compute_loss`, the model calls of the step scope's scoring pass (`_score_call`) inside `_plan_step`;
    what is left is the S2T mask, the counts, the metrics and the bookkeeping (and the scoring pass's packing). Measured
    directly, this small figure is far less exposed to background load than the difference of two step times.
    """

    def __init__(self):
        self.stapo_depth = 0
        self.parent_depth = 0
        self.total = 0.0
        self._stapo_start = 0.0
        self._parent_start = 0.0
        self._parent_time = 0.0
        self.restores = []

    def install(self):
        from trl import GRPOTrainer

        from stapo_trl import STAPOTrainer

        meter = self

        def wrap(owner, name, is_stapo):
            original = owner.__dict__[name]

            def wrapped(*args, **kwargs):
                if is_stapo:
                    meter.stapo_depth += 1
                    if meter.stapo_depth == 1:
                        meter._stapo_start, meter._parent_time = time.perf_counter(), 0.0
                elif meter.stapo_depth > 0:
                    meter.parent_depth += 1
                    if meter.parent_depth == 1:
                        meter._parent_start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    if is_stapo or meter.stapo_depth > 0:  # GPU: close the region's queued kernels first
                        synchronize()
                    if is_stapo:
                        meter.stapo_depth -= 1
                        if meter.stapo_depth == 0:
                            meter.total += time.perf_counter() - meter._stapo_start - meter._parent_time
                    elif meter.stapo_depth > 0:
                        meter.parent_depth -= 1
                        if meter.parent_depth == 0:
                            meter._parent_time += time.perf_counter() - meter._parent_start

            setattr(owner, name, wrapped)
            self.restores.append(lambda: setattr(owner, name, original))

        wrap(STAPOTrainer, "_compute_loss", True)
        wrap(STAPOTrainer, "_plan_step", True)  # spurious_stats_scope="step": the step-wide decision
        wrap(STAPOTrainer, "_score_call", False)  # the step scope's model call: the model's code, as the parent's pass
        for name in ("_compute_loss", "_get_per_token_logps_and_entropies", "get_high_entropy_mask"):
            wrap(GRPOTrainer, name, False)

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value

    def uninstall(self):
        for restore in reversed(self.restores):
            restore()
        self.restores = []


class ShapeRecorder(TorchDispatchMode):
    """Records the shape and dtype of every tensor an aten op produces, with the region that produced it."""

    def __init__(self, regions):
        super().__init__()
        self.regions = regions
        self.records = []  # (region, op, shape, dtype, numel)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        region = self.regions.current()
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.records.append((region, str(func), tuple(value.shape), str(value.dtype), value.numel()))
        return out


def record_tensor_shapes(trainer, batch) -> list:
    from trl import GRPOTrainer

    from stapo_trl import STAPOTrainer

    regions = _Regions()
    restores = [
        _wrap(STAPOTrainer, "_compute_loss", regions, "stapo"),
        _wrap(STAPOTrainer, "_plan_step", regions, "stapo"),
        _wrap(STAPOTrainer, "_score_call", regions, "parent"),  # the step scope's model call
        _wrap(GRPOTrainer, "_compute_loss", regions, "parent"),
        _wrap(GRPOTrainer, "_get_per_token_logps_and_entropies", regions, "parent"),
        _wrap(GRPOTrainer, "get_high_entropy_mask", regions, "parent"),
    ]
    recorder = ShapeRecorder(regions)
    try:
        with recorder:
            optimizer_step(trainer, batch)
    finally:
        for restore in reversed(restores):
            restore()
    return recorder.records


def tensor_check(records_by_variant: dict, batch_size: int, completion_length: int, vocab_size: int) -> dict:
    bt, btv = batch_size * completion_length, batch_size * completion_length * vocab_size
    result = {"B": batch_size, "T": completion_length, "V": vocab_size, "B*T": bt, "B*T*V": btv, "variants": {}}
    for variant, records in records_by_variant.items():
        per_region = {}
        for region, op, shape, dtype, numel in records:
            best = per_region.get(region)
            if best is None or numel > best["numel"]:
                per_region[region] = {"numel": numel, "shape": list(shape), "dtype": dtype, "op": op}
        large = collections.Counter((shape, dtype) for _, _, shape, dtype, numel in records if numel > bt)
        result["variants"][variant] = {
            "largest_by_region": per_region,
            "tensors_produced": len(records),
            "larger_than_BT": sum(large.values()),
            "_large": large,
        }
    stapo = result["variants"].get("stapo_s2t_on")
    grpo = result["variants"].get("grpo")
    if stapo is not None:
        own = stapo["largest_by_region"].get("stapo_own", {"numel": 0})
        result["stapo_own_largest_numel"] = own["numel"]
        result["stapo_own_largest_shape"] = own.get("shape")
        result["stapo_own_largest_over_BTV"] = own["numel"] / btv
        result["no_BTV_tensor_in_stapo_code"] = own["numel"] < btv
    if stapo is not None and grpo is not None:
        extra = stapo["_large"] - grpo["_large"]
        missing = grpo["_large"] - stapo["_large"]
        result["tensors_larger_than_BT_only_in_stapo"] = [
            {"shape": list(shape), "dtype": dtype, "count": count} for (shape, dtype), count in extra.items()
        ]
        result["tensors_larger_than_BT_only_in_grpo"] = [
            {"shape": list(shape), "dtype": dtype, "count": count} for (shape, dtype), count in missing.items()
        ]
        result["same_large_tensors_as_grpo"] = not extra
    for entry in result["variants"].values():
        del entry["_large"]
    return result


# --------------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------------


def allocator_peak_cpu(trainer, batch) -> dict:
    """Peak bytes held by torch's CPU allocator during one step, above the level before the step.

    From the allocation and free events that `torch.profiler` records with `profile_memory=True`.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer_step(trainer, batch)
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation and str(node.extra_fields.device).startswith("cpu"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    level = peak = 0
    for _, size in events:
        level += size
        peak = max(peak, level)
    return {"step_peak_bytes": peak, "allocation_events": len(events), "net_bytes_after_step": level}


def cuda_peak(trainer, batch) -> dict:
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    optimizer_step(trainer, batch)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"allocated_before_step_bytes": before, "max_memory_allocated_bytes": peak, "step_peak_bytes": peak - before}


def model_state_bytes(trainer) -> int:
    """Parameters + AdamW moments of this trainer's model (gradients are freed by `zero_grad(set_to_none=True)`)."""
    total = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    for state in trainer.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def rss_child(args) -> None:
    """One trainer alone in a fresh process: warm-up, a few steps, then the process peak RSS (CPU)."""
    trainer = make_trainer(args, args.rss_child, base_model(args))
    batch = make_batch(args)
    rss_before = current_rss_bytes()
    for _ in range(3):
        optimizer_step(trainer, batch)
    print(json.dumps({"variant": args.rss_child, "peak_rss_bytes": peak_rss_bytes(), "rss_before_steps": rss_before}))


def rss_in_fresh_processes(args, argv) -> dict:
    from _common import run_python

    results = collections.defaultdict(list)
    for repeat in range(args.rss_repeats):
        order = VARIANTS[repeat % len(VARIANTS) :] + VARIANTS[: repeat % len(VARIANTS)]
        for variant in order:
            out = run_python([str(Path(__file__).resolve()), *argv, "--rss-child", variant], timeout=900)
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
    return results


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return
    dev = device()
    print(f"device {dev}, torch threads {torch.get_num_threads()}, load average {load_average()}")
    model = base_model(args)
    num_parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: Qwen3 architecture, {num_parameters / 1e6:.1f}M parameters, vocab {args.vocab_size}, hidden "
        f"{args.hidden_size}, {args.layers} layers; batch B={args.batch_size} x (prompt {args.prompt_length} + "
        f"completion T={args.completion_length})"
    )
    trainers = {variant: make_trainer(args, variant, copy.deepcopy(model)) for variant in VARIANTS}
    del model
    batch = make_batch(args)

    # 1. Timing, interleaved step by step in a rotating order.
    times = {variant: [] for variant in VARIANTS}
    own_times = {variant: [] for variant in VARIANTS}
    meter = OwnTimeMeter()
    meter.install()  # on every variant alike (GRPOTrainer's methods are wrapped too; the wrappers cost microseconds)
    loads = []
    for round_index in range(args.warmup + args.rounds):
        shift = round_index % len(VARIANTS)
        this_round = {}
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            gc.collect()
            synchronize()
            start = time.perf_counter()
            optimizer_step(trainers[variant], batch)
            synchronize()
            elapsed = time.perf_counter() - start
            own = meter.take()
            this_round[variant] = elapsed
            if round_index >= args.warmup:
                times[variant].append(elapsed)
                own_times[variant].append(own)
        loads.append(load_average())
        label = "warm-up" if round_index < args.warmup else "timed"
        print(f"round {round_index} ({label}): " + ", ".join(f"{v} {this_round[v]:.3f}s" for v in VARIANTS), flush=True)
    meter.uninstall()
    timing = {variant: summary(values) for variant, values in times.items()}
    own_timing = {variant: summary(values) for variant, values in own_times.items() if variant != "grpo"}
    base = timing["grpo"]["median"]
    # Per-round ratios (each round's trainers ran back to back) are less sensitive to slow drifts in load.
    paired = {
        variant: summary([a / b for a, b in zip(times[variant], times["grpo"], strict=True)]) for variant in VARIANTS
    }
    ratios = {variant: timing[variant]["median"] / base for variant in VARIANTS}
    target = GPU_TARGET if dev.type == "cuda" else CPU_TARGET

    # 2. Forward passes per step.
    forward_counts = {variant: count_forward_passes(trainers[variant], batch) for variant in VARIANTS}

    # 3. Tensor shapes (one step each, untimed).
    records = {variant: record_tensor_shapes(trainers[variant], batch) for variant in ("grpo", "stapo_s2t_on")}
    tensors = tensor_check(records, args.batch_size, args.completion_length, args.vocab_size)
    del records

    # 4. Memory.
    memory = {}
    for variant in VARIANTS:
        step = cuda_peak(trainers[variant], batch) if dev.type == "cuda" else allocator_peak_cpu(trainers[variant], batch)
        step["model_state_bytes"] = model_state_bytes(trainers[variant])
        step["estimated_process_peak_bytes"] = step["model_state_bytes"] + step["step_peak_bytes"]
        memory[variant] = step
    memory_ratios = {
        "step_peak": {v: memory[v]["step_peak_bytes"] / memory["grpo"]["step_peak_bytes"] for v in VARIANTS},
        "state_plus_step_peak": {
            v: memory[v]["estimated_process_peak_bytes"] / memory["grpo"]["estimated_process_peak_bytes"]
            for v in VARIANTS
        },
    }
    rss = None
    if dev.type == "cpu" and args.rss_repeats > 0:
        del trainers
        gc.collect()
        rss = rss_in_fresh_processes(args, argv)
        rss_median = {v: summary([r["peak_rss_bytes"] for r in rss[v]])["median"] for v in VARIANTS}
        memory_ratios["process_peak_rss"] = {v: rss_median[v] / rss_median["grpo"] for v in VARIANTS}

    # Report.
    print("\n== optimizer step time (median over timed rounds) ==")
    for variant in VARIANTS:
        t = timing[variant]
        print(
            f"{VARIANT_LABELS[variant]:24s} {t['median']:.3f}s  (p25 {t['p25']:.3f}, p75 {t['p75']:.3f})  ratio to "
            f"GRPO {ratios[variant]:.4f}  paired-ratio median {paired[variant]['median']:.4f}"
        )
    overhead = ratios["stapo_s2t_on_micro_batch"] - 1
    print(
        f"S2T-on (micro_batch) overhead vs GRPOTrainer: {overhead * 100:+.2f}% (target <= {target * 100:.0f}% on "
        f"{dev.type})"
    )
    step_scope_ratio = {
        variant: {
            "median_ratio": timing[variant]["median"] / timing["stapo_s2t_on_micro_batch"]["median"],
            "paired_round_ratio_median": summary(
                [a / b for a, b in zip(times[variant], times["stapo_s2t_on_micro_batch"], strict=True)]
            )["median"],
        }
        for variant in ("stapo_s2t_on_step_before", "stapo_s2t_on")
    }
    for variant, ratio in step_scope_ratio.items():
        print(
            f"{VARIANT_LABELS[variant]} vs micro_batch: optimizer step x{ratio['median_ratio']:.3f} (paired rounds "
            f"x{ratio['paired_round_ratio_median']:.3f}); the step scope adds a gradient-free scoring pass"
        )
    own_fraction = {v: own_timing[v]["median"] / base for v in own_timing}
    for variant in own_timing:
        print(
            f"time in STAPO's own code ({VARIANT_LABELS[variant]}): median {own_timing[variant]['median'] * 1e3:.2f} ms "
            f"per step = {own_fraction[variant] * 100:.3f}% of GRPOTrainer's median step"
        )
    print("\n== forward passes per optimizer step ==")
    for variant in VARIANTS:
        print(f"{VARIANT_LABELS[variant]:24s} {forward_counts[variant]}")
    print("\n== tensors ==")
    print(
        f"largest tensor produced by STAPO's own code: {tensors.get('stapo_own_largest_shape')} "
        f"({tensors.get('stapo_own_largest_numel')} elements; B*T*V = {tensors['B*T*V']})"
    )
    print(f"tensors larger than (B, T) only in STAPO's step: {tensors.get('tensors_larger_than_BT_only_in_stapo')}")
    for variant, entry in tensors["variants"].items():
        for region, best in entry["largest_by_region"].items():
            print(f"  {variant:14s} {region:13s} largest {best['shape']} {best['dtype']} ({best['op']})")
    print("\n== memory ==")
    for variant in VARIANTS:
        m = memory[variant]
        print(
            f"{VARIANT_LABELS[variant]:24s} step peak {m['step_peak_bytes'] / 2**20:9.1f} MiB, model+optimizer state "
            f"{m['model_state_bytes'] / 2**20:7.1f} MiB"
        )
    if rss:
        for variant in VARIANTS:
            values = [r["peak_rss_bytes"] / 2**20 for r in rss[variant]]
            print(f"{VARIANT_LABELS[variant]:24s} process peak RSS (fresh process) {values} MiB")
    print(json.dumps(memory_ratios, indent=1))

    write_result(
        "step_cost",
        {
            "settings": {
                **{k: v for k, v in vars(args).items() if k not in ("rss_child", "output")},
                "num_parameters": num_parameters,
                "device": str(dev),
                "loss_type": "dapo",
                "what_is_timed": "Trainer.training_step (compute_loss + backward) + clip_grad_norm + AdamW step + "
                "zero_grad on a fixed prepared batch; trainers interleaved per round in rotating order",
            },
            "load_average_per_round": loads,
            "step_time_s": timing,
            "step_time_ratio_to_grpo": ratios,
            "paired_round_ratio_to_grpo": paired,
            "raw_step_times_s": times,
            "stapo_own_code_time_s": own_timing,
            "stapo_own_code_fraction_of_grpo_step": own_fraction,
            "target_overhead": target,
            "stapo_overhead": overhead,
            "step_scope_over_micro_batch_scope": step_scope_ratio,
            "forward_passes_per_step": forward_counts,
            "tensor_check": tensors,
            "memory": memory,
            "memory_ratio_to_grpo": memory_ratios,
            "memory_target_overhead": MEMORY_TARGET,
            "peak_rss_fresh_processes": rss,
        },
        output=args.output or Path(__file__).resolve().parent / "results" / f"step_cost_{dev.type}.json",
    )


if __name__ == "__main__":
    main()
