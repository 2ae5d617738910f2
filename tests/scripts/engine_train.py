"""Launched by tests/engines/test_zero.py through `accelerate launch --config_file accelerate_configs/<name>.yaml`.

    engine_train.py MODEL_DIR OUTPUT_DIR MAX_STEPS SAVE RESUME

A short `STAPOTrainer` run of the tiny model saved in MODEL_DIR on 2 CPU processes. SAVE=1 writes a checkpoint
after every step; RESUME=1 resumes from the latest checkpoint in OUTPUT_DIR. Every rank writes
OUTPUT_DIR/rank{R}.pt: the engine it trained under, the partitioning of each parameter between steps, the
completions it generated, the log history and the final (gathered) parameters.
"""

import os
import sys
from pathlib import Path

# Before DeepSpeed initialises its communication: otherwise it JIT-compiles its shared-memory collective (about
# 100 s and a C++ compiler), which gloo on one machine does not need.
import deepspeed
import deepspeed.ops
import torch
from transformers import TrainerCallback

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import addition_dataset  # noqa: E402

from stapo_trl import STAPOConfig, STAPOTrainer  # noqa: E402

# Below the probability of most tokens of the untrained model (about 1 / vocabulary size = 0.03): S2T silences some.
SPURIOUS_PROB_THRESHOLD = 0.05


class RecordPartitioning(TrainerCallback):
    """After each optimizer step: (numel on this rank, ds_numel, elements of this rank's shard) per parameter."""

    def __init__(self, model):
        self.model = model
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(
            {
                name: (param.numel(), getattr(param, "ds_numel", None), getattr(param, "ds_tensor", param).numel())
                for name, param in self.model.named_parameters()
            }
        )


def main(model_dir, output_dir, max_steps, save, resume):
    generated = []

    def digit_count_reward(completions, **kwargs):
        generated.extend(completions)
        return [float(sum(character.isdigit() for character in text)) for text in completions]

    args = STAPOConfig(
        output_dir=output_dir,
        ddp_backend="gloo",  # without it accelerate sees no backend on CPU and counts a single process
        # On a machine without GPU accelerate runs DDP (ddp.yaml) only as MULTI_CPU, which needs use_cpu; under
        # DeepSpeed use_cpu would silently replace DeepSpeed by DDP.
        use_cpu=os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        bf16=False,
        report_to=[],
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-4,
        logging_steps=1,
        max_steps=max_steps,
        save_strategy="steps" if save else "no",
        save_steps=1,
        seed=0,
        spurious_prob_threshold=SPURIOUS_PROB_THRESHOLD,
    )
    trainer = STAPOTrainer(
        model=model_dir, reward_funcs=digit_count_reward, args=args, train_dataset=addition_dataset()
    )
    recorder = RecordPartitioning(trainer.model)
    trainer.add_callback(recorder)
    trainer.train(resume_from_checkpoint=True if resume else None)

    parameters = list(trainer.model.parameters())
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if zero3:
        with deepspeed.zero.GatheredParameters(parameters):
            final = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    else:
        final = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    engine = trainer.model_wrapped
    result = {
        "output_dir": output_dir,
        "num_processes": trainer.accelerator.num_processes,
        "engine": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage() if trainer.is_deepspeed_enabled else None,
        "persistence_threshold": (
            engine._config.zero_config.param_persistence_threshold if trainer.is_deepspeed_enabled else None
        ),
        "partitioning": recorder.steps,
        "completions": generated,
        "log_history": trainer.state.log_history,
        "final": final,
    }
    torch.save(result, Path(output_dir) / f"rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1")
