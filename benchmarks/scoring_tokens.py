"""Tokens the `spurious_stats_scope="step"` scoring pass runs through the model, counted in a real training run.

Per optimizer step: the positions of every scoring call (rows x padded length, padding included) and the number of
calls, against the floor: the unpadded prompt + completion tokens of the completions with A > 0 (the only ones that
can hold a candidate) in the micro-batches that needed scoring (the first step after a generation takes TRL's
generation-time pass and needs none). Two runs of `trainer.train()` with generation, same seed and settings:
"before", the pass as it was (every micro-batch whole, as TRL pads it, one call each: `score_every_row_padded`), and
"after", the candidate-only pass (A > 0 rows, trimmed, packed under `spurious_scoring_token_budget`). Both runs also
record every S2T decision and every completion, to show that they silence the same tokens of the same completions.

The setting, chosen to have the shape of the paper's runs at CPU size:
- lengths with a long tail and some truncated: a random Qwen3-architecture model (hidden 32, 2 layers) over a
  ~190-character vocabulary samples the end-of-sequence token with probability about 1/190 per token, after at least
  `--min-completion-length` tokens: completions of `min + geometric` tokens, cut at `--max-completion-length`;
  prompts of 20-200 characters;
- a reward like the paper's +-1: each prompt has a chance of being answered right drawn uniformly from [0, 1] (so
  some groups are all right or all wrong, A = 0), a truncated completion is wrong; a completion is right when a hash
  of its text falls below its prompt's chance;
- micro-batch 1, 8 micro-batches per optimizer step, 4 optimizer steps per generation (`steps_per_generation` 32), 8
  completions per prompt (the paper's 256 x 8 rollouts and 4 updates per generation, per process).

    python benchmarks/scoring_tokens.py             # about a minute on 2 cores; writes results/scoring_tokens.json
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import ScoringCounter, load_average, score_every_row_padded, write_result

VARIANTS = ("before", "after")
# Every printable ASCII and Latin-1 character: a ~190-token vocabulary, so that a random model ends a completion
# with probability about 1/190 per token.
CHARACTERS = string.printable + "".join(chr(code) for code in range(0xA1, 0x100))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--max-completion-length", type=int, default=384)
    parser.add_argument("--min-completion-length", type=int, default=32)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=8)
    parser.add_argument("--updates-per-generation", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--budget", type=int, default=None, help="spurious_scoring_token_budget (default: None)")
    parser.add_argument(
        "--prob-threshold",
        type=float,
        default=0.005,
        help="tau_p: the random model spreads its probability evenly (about 1/190 per token), so the paper's 0.002 "
        "finds no candidate; 0.005 makes some tokens candidates, so that the two runs' decisions can be compared",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def _unit(*parts) -> float:
    digest = hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def dataset(num_prompts: int, seed: int):
    from datasets import Dataset

    generator = random.Random(seed)
    rows = []
    for index in range(num_prompts):
        text = "".join(generator.choice(string.ascii_letters + " ") for _ in range(generator.randint(20, 200)))
        rows.append({"prompt": f"Problem {index}: {text}\n", "chance": generator.random()})
    return Dataset.from_list(rows)


def make_reward(max_completion_length: int):
    def paper_like_reward(prompts, completions, completion_ids, chance, **kwargs):
        """+1 right, -1 wrong; a truncated completion is wrong."""
        return [
            -1.0 if len(ids) >= max_completion_length else (1.0 if _unit(prompt, completion) < right else -1.0)
            for prompt, completion, ids, right in zip(prompts, completions, completion_ids, chance, strict=True)
        ]

    return paper_like_reward


def run(args, variant: str) -> list[dict]:
    from stapo_trl import STAPOConfig, STAPOTrainer
    from stapo_trl.tiny import build_char_tokenizer, build_tiny_qwen3

    tokenizer = build_char_tokenizer([CHARACTERS])
    steps_per_generation = args.gradient_accumulation_steps * args.updates_per_generation
    prompts_per_generation = args.micro_batch_size * steps_per_generation // args.num_generations
    config = STAPOConfig(
        output_dir=tempfile.mkdtemp(prefix=f"scoring-{variant}-"), bf16=False, use_cpu=True, report_to=[],
        per_device_train_batch_size=args.micro_batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        steps_per_generation=steps_per_generation, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        generation_kwargs={"min_new_tokens": args.min_completion_length}, max_steps=args.max_steps,
        logging_steps=args.max_steps, save_strategy="no", seed=args.seed, disable_tqdm=True, learning_rate=1e-4,
        spurious_scoring_token_budget=args.budget, spurious_prob_threshold=args.prob_threshold,
    )  # fmt: skip
    trainer = STAPOTrainer(
        model=build_tiny_qwen3(
            tokenizer, size="test", seed=args.seed,
            max_position_embeddings=args.max_completion_length + 256,
        ),  # fmt: skip
        reward_funcs=make_reward(args.max_completion_length),
        args=config,
        train_dataset=dataset(prompts_per_generation * args.max_steps, args.seed),
        processing_class=tokenizer,
    )
    if variant == "before":
        score_every_row_padded(trainer)
    counter = ScoringCounter(trainer)
    completions = []
    prepare = trainer._prepare_step_inputs

    def recorded(batches):
        step_inputs = prepare(batches)
        completions.append(
            [
                hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:16]
                for inputs in step_inputs
                for ids in inputs["completion_ids"]
            ]
        )
        lengths.append([int(length) for inputs in step_inputs for length in inputs["completion_mask"].sum(dim=1)])
        return step_inputs

    lengths = []
    trainer._prepare_step_inputs = recorded
    trainer.train()
    for step, step_completions, step_lengths in zip(counter.steps, completions, lengths, strict=True):
        step["completions"], step["completion_lengths"] = step_completions, step_lengths
    return counter.steps


def summarise(runs: dict, max_completion_length: int) -> dict:
    totals = {}
    for variant, steps in runs.items():
        scored = [step for step in steps if step["micro_batches_needing_scoring"]] or steps
        totals[variant] = {
            "steps": len(steps),
            "steps_needing_scoring": len(scored),
            "scoring_positions_per_scored_step": statistics.mean(step["scoring_positions"] for step in scored),
            "scoring_calls_per_scored_step": statistics.mean(step["scoring_calls"] for step in scored),
            "floor_tokens_per_scored_step": statistics.mean(step["floor_tokens"] for step in scored),
            "padded_positions_per_scored_step": statistics.mean(step["padded_positions"] for step in scored),
            "scoring_positions_total": sum(step["scoring_positions"] for step in steps),
            "floor_tokens_total": sum(step["floor_tokens"] for step in steps),
            "real_tokens_total": sum(step["real_tokens"] for step in steps),
        }
    before, after = totals["before"], totals["after"]
    if not (before["floor_tokens_total"] and before["scoring_positions_total"]):
        raise SystemExit("no step needed scoring of a completion with A > 0: run more steps (--max-steps)")
    lengths = [length for step in runs["after"] for length in step["completion_lengths"]]
    ordered = sorted(lengths)
    same_completions = [a["completions"] for a in runs["after"]] == [b["completions"] for b in runs["before"]]
    same_decisions = [a["silenced"] for a in runs["after"]] == [b["silenced"] for b in runs["before"]]
    return {
        "per_variant": totals,
        "after_over_before_positions": after["scoring_positions_total"] / before["scoring_positions_total"],
        "after_over_floor": after["scoring_positions_total"] / after["floor_tokens_total"],
        "after_over_unpadded": after["scoring_positions_total"] / after["real_tokens_total"],
        "before_over_unpadded": before["scoring_positions_total"] / before["real_tokens_total"],
        "before_over_floor": before["scoring_positions_total"] / before["floor_tokens_total"],
        "calls_before_after": [before["scoring_calls_per_scored_step"], after["scoring_calls_per_scored_step"]],
        "positive_share": sum(step["positive_rows"] for step in runs["after"]) / sum(s["rows"] for s in runs["after"]),
        "completion_length": {
            "mean": statistics.mean(lengths),
            "p50": ordered[len(ordered) // 2],
            "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "max": ordered[-1],
            "truncated_share": sum(length >= max_completion_length for length in lengths) / len(lengths),
        },
        "same_completions": same_completions,
        "same_silenced_tokens": same_decisions,
        "silenced_tokens": sum(len(mask) for step in runs["after"] for mask in step["silenced"]),
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {load_average()}", flush=True)
    runs = {variant: run(args, variant) for variant in VARIANTS}
    result = summarise(runs, args.max_completion_length)
    print(
        "\nstep | needs scoring | positions before | calls before | positions after | calls after | A>0 floor | "
        "unpadded, all"
    )
    for before, after in zip(runs["before"], runs["after"], strict=True):
        print(
            f"{after['step']:4d} | {after['micro_batches_needing_scoring']:13d} | {before['scoring_positions']:16d} | "
            f"{before['scoring_calls']:12d} | {after['scoring_positions']:15d} | {after['scoring_calls']:11d} | "
            f"{after['floor_tokens']:9d} | {after['real_tokens']:13d}"
        )
    lengths = result["completion_length"]
    print(
        f"\ncompletion lengths: mean {lengths['mean']:.0f}, p50 {lengths['p50']}, p90 {lengths['p90']}, max "
        f"{lengths['max']}, truncated {lengths['truncated_share']:.1%}; A > 0: {result['positive_share']:.1%} of "
        f"completions\nscoring positions after / before: {result['after_over_before_positions']:.3f}; before / floor "
        f"{result['before_over_floor']:.2f}, after / floor {result['after_over_floor']:.3f}; over the unpadded tokens "
        f"of all completions: before {result['before_over_unpadded']:.2f}, after {result['after_over_unpadded']:.3f}; "
        "calls per scored step "
        f"before {result['calls_before_after'][0]:.1f}, after {result['calls_before_after'][1]:.1f}\nsame "
        f"completions in both runs: {result['same_completions']}; same silenced tokens: "
        f"{result['same_silenced_tokens']} ({result['silenced_tokens']} tokens); load average {load_average()}"
    )
    write_result("scoring_tokens", {"settings": vars(args), "summary": result, "steps": runs}, output=args.output)


if __name__ == "__main__":
    main()
