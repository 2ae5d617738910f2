"""What the step scope's scoring pass costs in an RL step at the paper's shape: a token-count model.

Work is counted in no-grad forward positions (one position through the model without gradient = 1), per process and
per generation batch (one generation and `--updates` optimizer steps):

- the update (TRL's loss forward, the recompute of activation checkpointing and the backward) costs
  `--update-cost` per position (2 + 2 backward ~ 4 forwards with checkpointing); TRL trains on its padded layout, so a
  micro-batch of 1 runs the generation batch's padded width `W` = prompt width + longest completion;
- TRL's own generation-time pass (old log-probs; it runs when an optimizer step is smaller than the generation
  batch, as in the paper) costs 1 per padded position of every completion, in GRPO and STAPO alike;
- the scoring pass runs for every update but the first (which takes TRL's generation-time pass): before, 1 per padded
  position of every completion; after, 1 per real prompt + completion token of the A > 0 completions, times the
  padding left inside packed calls (`--padding-in-calls`, counted by `scoring_tokens.py`);
- generation is a parameter: its share `g` of a GRPO RL step (generation + updates + TRL's pass).

Positions are counted linearly: attention's cost grows with the square of the length, which makes trimming save more
than this model says. The defaults are the paper's setting: 256 prompts x 8 rollouts on 64 GPUs (32 completions per
process per generation), 4 updates per generation at micro-batch 1, completions up to 15,360 tokens (one of the 32
reaching the cap sets the width), mid-training mean 6,000, 35% of completions with A > 0.

    python benchmarks/cost_model.py     # prints the table; writes results/cost_model.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--completions", type=int, default=32, help="per process per generation batch")
    parser.add_argument("--updates", type=int, default=4, help="optimizer steps per generation batch")
    parser.add_argument("--prompt-length", type=int, default=512, help="padded prompt width")
    parser.add_argument("--max-completion-length", type=int, default=15360, help="the batch's longest completion")
    parser.add_argument("--mean-prompt-length", type=int, default=300)
    parser.add_argument("--mean-completion-length", type=int, default=6000, help="of the A > 0 completions")
    parser.add_argument("--positive-share", type=float, default=0.35, help="completions with A > 0")
    parser.add_argument("--padding-in-calls", type=float, default=1.03, help="positions run / real tokens, after")
    parser.add_argument("--update-cost", type=float, default=4.0, help="update positions in no-grad forwards")
    parser.add_argument("--generation-shares", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7])
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def cost_model(args) -> dict:
    width = args.prompt_length + args.max_completion_length
    per_step = args.completions / args.updates
    update = args.updates * per_step * width * args.update_cost
    trl_pass = args.completions * width
    scored_updates = args.updates - 1
    before = scored_updates * per_step * width
    after = (
        scored_updates * per_step * args.positive_share
        * (args.mean_prompt_length + args.mean_completion_length) * args.padding_in_calls
    )  # fmt: skip
    grpo_without_generation = update + trl_pass
    rows = []
    for share in args.generation_shares:
        grpo = grpo_without_generation / (1.0 - share)
        rows.append(
            {
                "generation_share": share,
                "before_share_of_rl_step": before / (grpo + before),
                "after_share_of_rl_step": after / (grpo + after),
            }
        )
    return {
        "width": width,
        "work_per_generation_batch": {"update": update, "trl_generation_time_pass": trl_pass, "scoring_before": before,
                                      "scoring_after": after},  # fmt: skip
        "after_over_before": after / before,
        "rows": rows,
    }


def main(argv=None):
    args = parse_args(argv)
    result = cost_model(args)
    work = result["work_per_generation_batch"]
    print(
        f"per process and generation batch, in no-grad forward positions: update {work['update']:,.0f}, TRL's "
        f"generation-time pass {work['trl_generation_time_pass']:,.0f}, scoring before {work['scoring_before']:,.0f}, "
        f"after {work['scoring_after']:,.0f} (x{result['after_over_before']:.3f})"
    )
    print("generation share of a GRPO RL step | scoring pass, share of the RL step: before | after")
    for row in result["rows"]:
        print(
            f"{row['generation_share']:34.0%} | {row['before_share_of_rl_step']:41.2%} | "
            f"{row['after_share_of_rl_step']:.2%}"
        )
    write_result("cost_model", {"settings": vars(args), **result}, output=args.output)


if __name__ == "__main__":
    main()
