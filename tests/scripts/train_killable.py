"""Run by tests/test_reliability.py: train the tiny model, optionally SIGKILL itself at a step, or resume.

    python train_killable.py OUTPUT_DIR MAX_STEPS KILL_AT_STEP RESUME
KILL_AT_STEP > 0 kills the process (a real SIGKILL) as step KILL_AT_STEP + 1 begins, after checkpoint
KILL_AT_STEP was written; RESUME=1 resumes from the latest checkpoint. The final parameters go to final.pt.
"""

import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import build_trainer, digit_count_reward  # noqa: E402

from stapo_trl import STAPOConfig, STAPOTrainer  # noqa: E402


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main(output_dir, max_steps, kill_at, resume):
    trainer = build_trainer(
        STAPOTrainer,
        STAPOConfig,
        output_dir,
        reward_funcs=digit_count_reward,
        max_steps=max_steps,
        learning_rate=1e-3,
        spurious_prob_threshold=0.05,
        save_strategy="steps",
        save_steps=1,
    )
    if kill_at:
        trainer.add_callback(KillAt(kill_at))
    trainer.train(resume_from_checkpoint=True if resume else None)
    torch.save({name: param.detach() for name, param in trainer.model.named_parameters()}, Path(output_dir) / "final.pt")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1")
