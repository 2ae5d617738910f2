"""`spurious_stats_scope="step"`: S2T and the renormalised loss over whole optimizer steps, at every batch shape.

Each case trains for real (`trainer.train()`: generation, TRL's buffering over `steps_per_generation`, gradient
accumulation) and compares every optimizer step with `step_reference.whole_step_reference`, computed from the step's
weights and inputs alone. tests/test_multiprocess.py runs the same cases on two processes.
"""

import pytest
import torch
from conftest import addition_dataset, digit_count_reward, tiny_model, tiny_tokenizer
from step_reference import RecordingSTAPOTrainer, whole_step_reference
from transformers import TrainerCallback

from stapo_trl import STAPOConfig

# A random tiny model spreads its probability over ~30 tokens: tau_p = 0.05 makes about half the positive tokens
# candidates, so every micro-batch holds several and their entropies differ.
STEP_CASE_SETTINGS = dict(spurious_prob_threshold=0.05, spurious_entropy_quantile=0.75, learning_rate=0.02)
SHAPES = [(ga, spg) for ga in (1, 2, 4) for spg in (1, 2, 4)]


class KeepGradients(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.optimizer_step_grads()


def recording_trainer(output_dir, gradient_accumulation_steps, steps_per_generation, max_steps=2, **settings):
    tokenizer = tiny_tokenizer()
    config = STAPOConfig(
        output_dir=str(output_dir),
        bf16=False,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        gradient_accumulation_steps=gradient_accumulation_steps,
        steps_per_generation=steps_per_generation,
        max_steps=max_steps,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **{**STEP_CASE_SETTINGS, **settings},
    )
    trainer = RecordingSTAPOTrainer(
        model=tiny_model(tokenizer),
        reward_funcs=digit_count_reward,
        args=config,
        train_dataset=addition_dataset(64),
        processing_class=tokenizer,
    )
    trainer.add_callback(KeepGradients(trainer))
    return trainer


def reference_of(trainer, step, micro_batches=None):
    args = trainer.args
    return whole_step_reference(
        trainer.model.config,
        step["weights"],
        step["inputs"] if micro_batches is None else micro_batches,
        args.spurious_prob_threshold,
        args.spurious_entropy_quantile,
        args.epsilon,
        args.epsilon_high,
    )


def assert_step_matches(step, reference, loss):
    assert loss == pytest.approx(reference["loss"].item(), rel=1e-5, abs=1e-7)
    assert step["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(step["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)


def own_thresholds(candidate_entropies, quantile):
    return [torch.quantile(values, quantile).item() for values in candidate_entropies if values.numel()]


@pytest.mark.parametrize(("gradient_accumulation_steps", "steps_per_generation"), SHAPES)
def test_step_equals_whole_step_reference(tmp_path, gradient_accumulation_steps, steps_per_generation):
    trainer = recording_trainer(tmp_path, gradient_accumulation_steps, steps_per_generation)
    trainer.train()
    assert len(trainer.steps) == 2
    differs, silenced = False, 0
    for step in trainer.steps:
        assert len(step["inputs"]) == gradient_accumulation_steps
        reference = reference_of(trainer, step)
        silenced += sum(int(mask.sum()) for mask in reference["silenced"])
        for planned, expected in zip(step["silenced"], reference["silenced"], strict=True):
            assert torch.equal(planned, expected)
        assert_step_matches(step, reference, step["loss"])
        tau_h = reference["entropy_threshold"].item()
        differs |= all(abs(own - tau_h) > 1e-6 for own in own_thresholds(reference["candidate_entropies"], 0.75))
    assert silenced > 0, "the case must silence tokens"
    if gradient_accumulation_steps > 1:
        assert differs, "the step's tau_h must differ from every micro-batch's own in some step"
