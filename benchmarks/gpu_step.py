"""One GPU, the Qwen3-8B architecture: what the paper's rule (`spurious_stats_scope="step"`) costs in an RL step.

One process builds a real-size model from its configuration with random weights (Qwen3-8B-Base's architecture by
default, bf16 weights, SDPA attention, activation checkpointing) and times, on identical weights and identical
batches, interleaved round by round in a rotating order, whole optimizer steps of:

- `grpo`: TRL's `GRPOTrainer`;
- `micro_batch`: `STAPOTrainer`, S2T on, `spurious_stats_scope="micro_batch"` (no scoring pass);
- `step_before`: `STAPOTrainer`, `"step"`, scoring every row of every micro-batch as TRL pads it, one call each
  (the pass before it scored only candidate rows: `score_every_row_padded`);
- `step`: `STAPOTrainer`, `"step"`, as shipped (A > 0 rows, trimmed, packed).

An optimizer step is `--gradient-accumulation-steps` micro-batches of `--micro-batch-size` completions (TRL's loss and
backward each), gradient clipping and one optimizer step; all four trainers share the model and one AdamW at learning
rate 0, so the weights never change (the AdamW kernels still run). The batches have the shape of the paper's runs: a
generation batch of `--updates-per-generation` optimizer steps of completions, `--num-generations` per prompt, with
log-normal completion lengths (mean `--mean-completion-length`, long tail, cut at `--max-completion-length`: the
truncated ones), prompts of `--prompt-lengths`, a +-1 reward (each prompt right with a chance drawn uniformly, a
truncated completion wrong) and group-normalised advantages, so that some groups have A = 0; TRL pads the generation
batch to its longest prompt and completion, shuffles it and splits it into micro-batches, and so does this script.
Every timed step needs the scoring pass (in training the first update after a generation takes TRL's generation-time
pass instead).

Reported per variant: median step time, peak `torch.cuda.max_memory_allocated`; for the step scope, the scoring pass's
time, positions (padding included) and calls per step. Generation: `model.generate` of `--generate-tokens` new tokens
for the generation batch's prompts (sampling, KV cache), giving a decoding time per token step; a generation batch
takes about that times its longest completion (a lower bound: attention over a longer cache costs more). From these,
each variant's share of an RL step (one generation + `--updates-per-generation` optimizer steps, the first of which
needs no scoring pass). HF `generate` is slower than vLLM: the generation share it gives is an upper bound; the README's
cost model takes the generation share as a parameter.

    python benchmarks/gpu_step.py        # one H100/H200: a few minutes; writes results/gpu_step.json
    python benchmarks/gpu_step.py --device cpu --model-size test ...   # the tiny CPU run of benchmarks/tests

Without a CUDA device and without `--device cpu` it refuses (exit code 2) before building anything.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import (
    ScoringCounter,
    build_qwen3,
    build_trainer,
    load_average,
    optimizer_step,
    score_every_row_padded,
    summary,
    synchronize,
    write_result,
)

VARIANTS = ("grpo", "micro_batch", "step_before", "step")
STEP_SCOPE = ("step_before", "step")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="qwen3-8b", help="a size of stapo_trl.tiny.QWEN3_SIZES")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=8)
    parser.add_argument("--updates-per-generation", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--mean-completion-length", type=int, default=3000)
    parser.add_argument("--max-completion-length", type=int, default=8192)
    parser.add_argument("--length-spread", type=float, default=0.8, help="sigma of the log-normal completion lengths")
    parser.add_argument("--prompt-lengths", type=int, nargs=2, default=[128, 768], metavar=("MIN", "MAX"))
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (every variant steps once per round)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
    parser.add_argument("--generate-tokens", type=int, default=128, help="new tokens per completion for `generate`")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def generation_batch(args, vocab_size: int, device) -> list[list[dict]]:
    """The optimizer steps of one generation batch, each a list of micro-batches as TRL hands them to the loss."""
    generator = random.Random(args.seed)
    steps = args.updates_per_generation
    completions = args.micro_batch_size * args.gradient_accumulation_steps * steps
    groups = completions // args.num_generations
    sigma = args.length_spread
    mu = math.log(args.mean_completion_length) - sigma**2 / 2  # a log-normal of this mean
    prompt_lengths, completion_lengths, rewards = [], [], []
    for _ in range(groups):
        prompt = generator.randint(*args.prompt_lengths)
        chance = generator.random()
        for _ in range(args.num_generations):
            length = min(max(1, round(generator.lognormvariate(mu, sigma))), args.max_completion_length)
            prompt_lengths.append(prompt)
            completion_lengths.append(length)
            right = length < args.max_completion_length and generator.random() < chance
            rewards.append(1.0 if right else -1.0)
    grouped = torch.tensor(rewards).view(groups, args.num_generations)
    advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    width_p, width_c = max(prompt_lengths), max(completion_lengths)
    torch_generator = torch.Generator().manual_seed(args.seed)
    prompt_ids = torch.randint(3, vocab_size, (completions, width_p), generator=torch_generator)
    completion_ids = torch.randint(3, vocab_size, (completions, width_c), generator=torch_generator)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_mask = torch.zeros_like(completion_ids)
    for row, (prompt, completion) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        prompt_mask[row, width_p - prompt :] = 1  # left padding
        completion_mask[row, :completion] = 1  # right padding
    prompt_ids[prompt_mask == 0] = 0
    completion_ids[completion_mask == 0] = 0
    order = torch.randperm(completions, generator=torch_generator)  # TRL shuffles the generation batch
    batch = {
        "prompt_ids": prompt_ids[order],
        "prompt_mask": prompt_mask[order],
        "completion_ids": completion_ids[order],
        "completion_mask": completion_mask[order],
        "advantages": advantages[order],
    }
    micro_batches = []
    for start in range(0, completions, args.micro_batch_size):
        micro = {key: value[start : start + args.micro_batch_size].to(device) for key, value in batch.items()}
        micro_batches.append(micro)
    per_step = args.gradient_accumulation_steps
    step_batches = [micro_batches[index : index + per_step] for index in range(0, len(micro_batches), per_step)]
    for step in step_batches:  # TRL's global token count: here the step's (one process)
        tokens = sum(micro["completion_mask"].sum() for micro in step)
        for micro in step:
            micro["num_items_in_batch"] = tokens
    return step_batches


def build(args, device, dtype):
    model = build_qwen3(
        args.model_size,
        seed=args.seed,
        dtype=dtype,
        device=device,
        attn_implementation="sdpa",
        max_position_embeddings=max(args.prompt_lengths) + args.max_completion_length + args.generate_tokens,
    )
    trainers = {}
    for variant in VARIANTS:
        trainer = build_trainer(
            "grpo" if variant == "grpo" else "stapo_s2t_on_micro_batch" if variant == "micro_batch" else "stapo_s2t_on",
            model,
            batch_size=args.micro_batch_size,
            num_generations=args.num_generations,
            completion_length=args.max_completion_length,
            bf16=dtype == torch.bfloat16,
            gradient_checkpointing=not args.no_gradient_checkpointing,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            steps_per_generation=args.gradient_accumulation_steps * args.updates_per_generation,
        )
        if variant == "step_before":
            score_every_row_padded(trainer)
        trainers[variant] = trainer
    if not args.no_gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # One optimizer for all, at learning rate 0: every variant steps on the same weights.
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, fused=device.type == "cuda")
    for trainer in trainers.values():
        trainer.optimizer = optimizer
    return model, trainers


def peak_memory_bytes(device) -> int | None:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else None


def time_generation(args, model, steps, device) -> dict:
    """`model.generate` of `--generate-tokens` new tokens for every prompt of the generation batch, sampling."""
    prompts = [micro for step in steps for micro in step]
    prompt_ids = torch.cat([micro["prompt_ids"] for micro in prompts])
    prompt_mask = torch.cat([micro["prompt_mask"] for micro in prompts])
    model.eval()
    try:
        synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, max_new_tokens=args.generate_tokens,
                min_new_tokens=args.generate_tokens, pad_token_id=0, eos_token_id=None,
            )  # fmt: skip
        synchronize()
        elapsed = time.perf_counter() - start
    finally:
        model.train()
    new_tokens = output.size(1) - prompt_ids.size(1)
    longest = max(int(micro["completion_mask"].sum(1).max()) for micro in prompts)
    per_token_step = elapsed / new_tokens
    return {
        "sequences": prompt_ids.size(0),
        "new_tokens": new_tokens,
        "seconds": elapsed,
        "seconds_per_token_step": per_token_step,
        "longest_completion": longest,
        "generation_batch_s_estimate": per_token_step * longest,
    }


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("No CUDA device: this benchmark measures a GPU step; nothing was run. (`--device cpu` runs it on CPU.)")
        return 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    model, trainers = build(args, device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    steps = generation_batch(args, model.config.vocab_size, device)
    lengths = [int(length) for step in steps for micro in step for length in micro["completion_mask"].sum(1)]
    positive = sum(int((micro["advantages"] > 0).sum()) for step in steps for micro in step) / len(lengths)
    truncated = sum(length >= args.max_completion_length for length in lengths) / len(lengths)
    print(
        f"{args.model_size}: {parameters:,} parameters, {dtype}, {device}, activation checkpointing "
        f"{'off' if args.no_gradient_checkpointing else 'on'}; {len(steps)} optimizer steps of "
        f"{args.gradient_accumulation_steps} x {args.micro_batch_size} completions: mean completion "
        f"{statistics.mean(lengths):.0f} tokens, max {max(lengths)}, {truncated:.0%} truncated, A > 0 {positive:.0%}; "
        f"padded width {steps[0][0]['prompt_ids'].size(1)} + {steps[0][0]['completion_ids'].size(1)}; built in "
        f"{time.perf_counter() - started:.0f} s; load average {load_average()}",
        flush=True,
    )
    counters = {variant: ScoringCounter(trainers[variant]) for variant in STEP_SCOPE}
    times = {variant: [] for variant in VARIANTS}
    peaks = dict.fromkeys(VARIANTS, 0)
    for round_index in range(args.warmup + args.rounds):
        step = steps[round_index % len(steps)]
        shift = round_index % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            synchronize()
            start = time.perf_counter()
            optimizer_step(trainers[variant], *step)
            synchronize()
            elapsed = time.perf_counter() - start
            if round_index >= args.warmup:
                times[variant].append(elapsed)
                peaks[variant] = max(peaks[variant], peak_memory_bytes(device) or 0)
        label = "warm-up" if round_index < args.warmup else "timed"
        print(f"round {round_index} ({label}) done at {time.perf_counter() - started:.0f} s", flush=True)
    generation = time_generation(args, model, steps, device)

    timing = {variant: summary(values) for variant, values in times.items()}
    median = {variant: timing[variant]["median"] for variant in VARIANTS}
    scoring = {}
    for variant in STEP_SCOPE:
        timed = counters[variant].steps[args.warmup :]
        scoring[variant] = {
            "scoring_s": summary([step["plan_s"] for step in timed]),
            "scoring_positions_per_step": statistics.mean(step["scoring_positions"] for step in timed),
            "scoring_calls_per_step": statistics.mean(step["scoring_calls"] for step in timed),
            "floor_tokens_per_step": statistics.mean(step["floor_tokens"] for step in timed),
            "padded_positions_per_step": statistics.mean(step["padded_positions"] for step in timed),
            "share_of_step": statistics.median(step["plan_s"] for step in timed) / median[variant],
        }
    same_decisions = [step["silenced"] for step in counters["step"].steps] == [
        step["silenced"] for step in counters["step_before"].steps
    ]
    updates = args.updates_per_generation
    # An RL step: one generation and `updates` optimizer steps, of which the first needs no scoring pass.
    rl_step = {
        variant: generation["generation_batch_s_estimate"] + updates * median[variant]
        - (scoring[variant]["scoring_s"]["median"] if variant in STEP_SCOPE else 0.0)
        for variant in VARIANTS
    }  # fmt: skip
    result = {
        "step_time_s": timing,
        "step_over_grpo": {variant: median[variant] / median["grpo"] for variant in VARIANTS},
        "step_over_micro_batch": {variant: median[variant] / median["micro_batch"] for variant in STEP_SCOPE},
        "peak_memory_allocated_bytes": peaks if device.type == "cuda" else None,
        "scoring": scoring,
        "same_silenced_tokens": same_decisions,
        "generation": generation,
        "rl_step_s": rl_step,
        "rl_step_over_grpo": {variant: rl_step[variant] / rl_step["grpo"] for variant in VARIANTS},
        "generation_share_of_grpo_rl_step": generation["generation_batch_s_estimate"] / rl_step["grpo"],
        "completion_lengths": {"mean": statistics.mean(lengths), "max": max(lengths), "truncated_share": truncated},
        "positive_share": positive,
        "parameters": parameters,
        "wall_s": time.perf_counter() - started,
    }
    print(
        "\nvariant      step (median)  x GRPO   peak memory   scoring per step (positions, calls)   "
        "x GRPO in an RL step"
    )
    for variant in VARIANTS:
        peak = f"{peaks[variant] / 2**30:8.1f} GiB" if device.type == "cuda" else "       -    "
        scored = (
            f"{scoring[variant]['scoring_s']['median']:.3f} s ({scoring[variant]['share_of_step']:.1%} of the step; "
            f"{scoring[variant]['scoring_positions_per_step']:.0f}, {scoring[variant]['scoring_calls_per_step']:.1f})"
            if variant in STEP_SCOPE
            else "-"
        )
        print(
            f"{variant:12s} {median[variant]:10.3f} s  {result['step_over_grpo'][variant]:6.3f}  {peak}   {scored:36s}"
            f"  {result['rl_step_over_grpo'][variant]:.4f}"
        )
    print(
        f"A > 0 floor per step: {scoring['step']['floor_tokens_per_step']:.0f} tokens; same silenced tokens before "
        f"and after: {same_decisions}\ngeneration: {generation['seconds']:.1f} s for {generation['new_tokens']} tokens "
        f"x {generation['sequences']} sequences ({generation['seconds_per_token_step'] * 1e3:.1f} ms per token step); "
        f"the generation batch (longest completion {generation['longest_completion']}) ~"
        f"{generation['generation_batch_s_estimate']:.0f} s = {result['generation_share_of_grpo_rl_step']:.0%} of a "
        f"GRPO RL step of {updates} updates\nwall time {result['wall_s']:.0f} s; load average {load_average()}"
    )
    write_result("gpu_step", {"settings": vars(args), **result}, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
