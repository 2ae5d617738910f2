"""Run by `torchrun --nproc_per_node 2` from tests/test_multiprocess.py: `spurious_stats_scope="step"` on two processes.

For every (gradient accumulation, steps_per_generation, num_iterations) shape of tests/test_step_scope.py, both ranks train two
optimizer steps; rank 0 collects every micro-batch of every step from both ranks, recomputes each step with
`whole_step_reference` and saves, per shape and step, the trainer's loss (mean over ranks, as DDP's gradient is) and
averaged gradients next to the reference for the test to compare.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_step_scope import SHAPES, recording_trainer, reference_of  # noqa: E402


def main(output_path):
    results = {}
    for shape in SHAPES:
        trainer = recording_trainer(Path(output_path).parent / "run-{}-{}-{}".format(*shape), *shape)
        assert trainer.accelerator.num_processes == 2, trainer.accelerator.state
        trainer.train()
        steps = []
        for step in trainer.steps:
            every_rank = [None] * 2
            dist.all_gather_object(
                every_rank,
                {"inputs": step["inputs"], "silenced": step["silenced"], "scoring_calls": len(step["scoring_calls"])},
            )
            loss = torch.tensor(step["loss"], dtype=torch.float64)
            dist.all_reduce(loss)
            micro_batches = [micro for rank in every_rank for micro in rank["inputs"]]
            reference = reference_of(trainer, step, micro_batches)
            steps.append(
                {
                    "loss": loss.item() / 2,
                    "grads": step["grads"],
                    "silenced": [mask for rank in every_rank for mask in rank["silenced"]],
                    "micro_steps_per_rank": len(step["inputs"]),
                    "scoring_calls_per_rank": [rank["scoring_calls"] for rank in every_rank],
                    "reference": reference,
                }
            )
        results[shape] = steps
    if dist.get_rank() == 0:
        torch.save(results, output_path)


if __name__ == "__main__":
    main(sys.argv[1])
