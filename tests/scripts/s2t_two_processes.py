"""Run by `torchrun --nproc_per_node 2` from tests/test_multiprocess.py: STAPO's loss on a batch split over ranks.

Rank 0 takes sequences 0 and 2 of the hand batch, rank 1 sequences 1 and 3 (each holds one positive-advantage
sequence). Each computes STAPO's loss and gradients, averages the gradients as DDP does, and rank 0 saves the
silenced-token mask (in batch order), tau_h, the mean loss and the gradients for the test to compare.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build_trainer, hand_batch, loss_grads_and_spurious  # noqa: E402

from stapo_trl import STAPOConfig, STAPOTrainer  # noqa: E402

ROWS_OF_RANK = ([0, 2], [1, 3])


def main(output_path, prob_threshold):
    trainer = build_trainer(
        STAPOTrainer,
        STAPOConfig,
        Path(output_path).parent / "two-process-run",
        spurious_prob_threshold=prob_threshold,
        spurious_entropy_quantile=0.5,
    )
    accelerator = trainer.accelerator
    assert accelerator.num_processes == 2, accelerator.state
    rows = torch.tensor(ROWS_OF_RANK[accelerator.process_index])
    full = hand_batch(trainer.processing_class)
    local = {key: value[rows] for key, value in full.items() if key != "num_items_in_batch"}
    local["num_items_in_batch"] = full["num_items_in_batch"]  # TRL's count is global

    loss, grads, found = loss_grads_and_spurious(trainer, local)
    mean_loss = accelerator.reduce(loss.clone(), reduction="mean")
    averaged = {name: accelerator.reduce(grad.contiguous(), reduction="mean") for name, grad in grads.items()}
    gathered = accelerator.gather(found.spurious.int())
    spurious = torch.empty_like(gathered)
    spurious[torch.tensor(ROWS_OF_RANK).reshape(-1)] = gathered
    metrics = trainer._finish_s2t_window("train")
    if accelerator.is_main_process:
        torch.save(
            {
                "loss": mean_loss,
                "grads": averaged,
                "spurious": spurious.bool(),
                "entropy_threshold": found.entropy_threshold,
                "metrics": metrics,
            },
            output_path,
        )


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
