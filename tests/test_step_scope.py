"""`spurious_stats_scope="step"`: S2T and the renormalised loss over whole optimizer steps, at every batch shape.

Each case trains for real (`trainer.train()`: generation, TRL's buffering over `steps_per_generation`, gradient
accumulation) and compares every optimizer step with `step_reference.whole_step_reference`, computed from the step's
weights and inputs alone. tests/test_multiprocess.py runs the same cases on two processes.
"""

import pytest
import torch
from conftest import addition_dataset, build_trainer, current_logps_and_entropies, digit_count_reward, hand_batch
from step_reference import RecordingSTAPOTrainer, whole_step_reference
from transformers import TrainerCallback

from stapo_trl import STAPOConfig, STAPOTrainer
from stapo_trl.trainer import _STAT, pack_rows

# A random tiny model spreads its probability over ~30 tokens: tau_p = 0.05 makes about half the positive tokens
# candidates, so every micro-batch holds several and their entropies differ.
STEP_CASE_SETTINGS = dict(spurious_prob_threshold=0.05, spurious_entropy_quantile=0.75, learning_rate=0.02)
# (gradient_accumulation_steps, steps_per_generation, num_iterations)
SHAPES = [(ga, spg, 1) for ga in (1, 2, 4) for spg in (1, 2, 4)] + [(1, 2, 2), (2, 2, 2)]


class KeepGradients(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.optimizer_step_grads()


def recording_trainer(
    output_dir, gradient_accumulation_steps, steps_per_generation, num_iterations=1, max_steps=2, **settings
):
    trainer = build_trainer(
        RecordingSTAPOTrainer,
        STAPOConfig,
        output_dir,
        reward_funcs=digit_count_reward,
        train_dataset=addition_dataset(64),
        gradient_accumulation_steps=gradient_accumulation_steps,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
        max_steps=max_steps,
        max_grad_norm=0.0,
        **{**STEP_CASE_SETTINGS, **settings},
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


@pytest.mark.parametrize(("gradient_accumulation_steps", "steps_per_generation", "num_iterations"), SHAPES)
def test_step_equals_whole_step_reference(tmp_path, gradient_accumulation_steps, steps_per_generation, num_iterations):
    trainer = recording_trainer(tmp_path, gradient_accumulation_steps, steps_per_generation, num_iterations)
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


def test_generation_time_pass_is_reused(tmp_path, monkeypatch):
    """With steps_per_generation > GA, the first step after a generation takes TRL's own scoring pass; later steps of
    the same generation batch are scored again with their weights."""
    from trl import GRPOTrainer

    calls = []
    forward = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *args, **kwargs):
        calls.append((self.state.global_step, torch.is_grad_enabled(), kwargs.get("compute_entropy", False)))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    trainer = recording_trainer(tmp_path, gradient_accumulation_steps=1, steps_per_generation=2)
    trainer.train()
    # step 0: TRL's generation-time pass (with the entropies S2T needs) and no scoring call; step 1: scoring calls
    assert [(step, entropy) for step, grad, entropy in calls if not grad] == [(0, True)]
    assert [step for step, grad, _ in calls if grad] == [0, 1]
    assert [len(step["scoring_calls"]) > 0 for step in trainer.steps] == [False, True]
    first = trainer.steps[0]
    assert torch.equal(first["scores"][0][0], first["inputs"][0]["old_per_token_logps"])


def test_scoring_pass_runs_positive_rows_trimmed_in_packed_calls(tmp_path):
    """Two micro-batches of one step: only the rows with a positive advantage are scored, each trimmed to its prompt +
    completion tokens, grouped into calls by `pack_rows`; their values are the padded pass's up to rounding."""
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, gradient_accumulation_steps=2)
    first, second = hand_batch(trainer.processing_class, seed=0), hand_batch(trainer.processing_class, seed=1)
    second["advantages"] = torch.tensor([0.5, -1.0, 2.0, 0.0])
    lengths = {
        (index, row): int(inputs["prompt_mask"][row].sum() + inputs["completion_mask"][row].sum())
        for index, inputs in enumerate((first, second))
        for row in range(4)
    }
    positive = [(0, 0), (0, 1), (1, 0), (1, 2)]  # advantages 1.0, 0.7 | 0.5, 2.0
    shapes = []
    score_call = trainer._score_call
    trainer._score_call = lambda input_ids, *args: shapes.append(tuple(input_ids.shape)) or score_call(input_ids, *args)
    trainer.model.train()
    width = first["prompt_ids"].size(1) + first["completion_ids"].size(1)
    for budget in (None, 2 * max(lengths.values()), 1):
        trainer.args.spurious_scoring_token_budget = budget
        shapes.clear()
        scores = trainer._score_step([first, second])
        with torch.no_grad():
            padded = [trainer._score_whole_micro_batch(inputs) for inputs in (first, second)]
        assert [score.rows.nonzero().flatten().tolist() for score in scores] == [[0, 1], [0, 2]]
        calls = pack_rows([lengths[key] for key in positive], 4 * width if budget is None else budget)
        assert shapes == [(len(call), lengths[positive[call[0]]]) for call in calls]
        if budget == 1:  # a call per row: nothing but the rows' own tokens
            assert sum(rows * length for rows, length in shapes) == sum(lengths[key] for key in positive)
        for score, whole, inputs in zip(scores, padded, (first, second), strict=True):
            rows = score.rows.unsqueeze(1)
            mask = inputs["completion_mask"].bool() & rows
            torch.testing.assert_close(score.per_token_logps[mask], whole.per_token_logps[mask], rtol=0, atol=1e-6)
            torch.testing.assert_close(score.entropies[mask], whole.entropies[mask], rtol=0, atol=1e-6)
            assert not score.per_token_logps[~rows.expand_as(mask)].any()


def test_pack_rows_fills_calls_longest_first():
    assert pack_rows([5, 9, 3, 9, 2], 18) == [[1, 3], [0, 2, 4]]
    assert pack_rows([5, 9, 3, 9, 2], 4) == [[1], [3], [0], [2], [4]]  # a row longer than the budget goes alone
    assert pack_rows([], 10) == []


def test_decisions_equal_the_padded_pass(tmp_path, monkeypatch):
    """A step decided from the trimmed, packed scoring pass silences the same tokens and keeps the same counts as one
    decided from every row of every micro-batch as TRL pads it."""
    trainer = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path, gradient_accumulation_steps=2, spurious_prob_threshold=0.05
    )
    trainer.model.train()
    step = [hand_batch(trainer.processing_class, seed=seed) for seed in (0, 1)]
    packed = trainer._plan_step(step)
    monkeypatch.setattr(trainer, "_scores_whole_micro_batches", lambda step_inputs: True)
    padded = trainer._plan_step(step)
    assert sum(int(decision.silenced.sum()) for decision in padded.decisions) > 0
    for ours, theirs in zip(packed.decisions, padded.decisions, strict=True):
        assert torch.equal(ours.silenced, theirs.silenced)
        assert torch.equal(ours.keep, theirs.keep)
    counts = [
        _STAT[name] for name in ("loss_tokens", "scored_tokens", "kept_tokens", "candidate_tokens", "silenced_tokens")
    ]
    assert torch.equal(packed.statistics[:, counts], padded.statistics[:, counts])


def test_logged_metrics_are_window_sums(tmp_path):
    """Two logging windows of three optimizer steps (GA 2, steps_per_generation 4): every stapo/* metric equals the
    counts taken by hand from the recorded masks and scores of the window's steps."""
    trainer = recording_trainer(tmp_path, gradient_accumulation_steps=2, steps_per_generation=4, max_steps=6)
    trainer.args.logging_steps = 3
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "stapo/masked_frac" in entry]
    assert [entry["step"] for entry in logged] == [3, 6]
    tau_p, q = trainer.args.spurious_prob_threshold, trainer.args.spurious_entropy_quantile
    for entry, window in zip(logged, (trainer.steps[:3], trainer.steps[3:]), strict=True):
        silenced = scored = candidates = 0
        silenced_probs, scored_entropies, thresholds = [], [], []
        for step in window:
            step_candidates = []
            # the plan's scores in the rows it scored (positive advantages), the step's own forward in the others
            scores = [
                (torch.where(rows[:, None], logps, forward_logps), torch.where(rows[:, None], entropies, forward))
                for (logps, entropies, rows), (forward_logps, forward) in zip(
                    step["scores"], reference_of(trainer, step)["scores"], strict=True
                )
            ]
            for inputs, (logps, entropies), mask in zip(step["inputs"], scores, step["silenced"], strict=True):
                loss_mask = inputs["completion_mask"].bool()
                found = loss_mask & (inputs["advantages"] > 0).unsqueeze(1) & (logps.exp() < tau_p)
                step_candidates.append(entropies[found])
                silenced += int(mask.sum())
                scored += int(loss_mask.sum())
                candidates += int(found.sum())
                silenced_probs.append(logps.exp()[mask])
                scored_entropies.append(entropies[loss_mask])
            thresholds.append(torch.quantile(torch.cat(step_candidates), q).item())
        assert silenced > 0
        assert entry["stapo/masked_tokens"] == pytest.approx(silenced / 3, rel=1e-9)
        assert entry["stapo/masked_frac"] == pytest.approx(silenced / scored, rel=1e-9)
        assert entry["stapo/candidate_frac"] == pytest.approx(candidates / scored, rel=1e-9)
        assert entry["stapo/entropy_threshold"] == pytest.approx(sum(thresholds) / 3, rel=1e-6)
        assert entry["stapo/masked_prob_mean"] == pytest.approx(torch.cat(silenced_probs).mean().item(), rel=1e-6)
        assert entry["stapo/nonfinite_tokens"] == 0.0
        exact = torch.quantile(torch.cat(scored_entropies), torch.tensor([0.1, 0.5, 0.9])).tolist()
        for name, value in zip(("stapo/entropy_p10", "stapo/entropy_p50", "stapo/entropy_p90"), exact, strict=True):
            assert entry[name] == pytest.approx(value, rel=0.02), name  # fixed bins are 1.6% wide


@pytest.mark.parametrize("entropy_quantile", [0.0, 0.75], ids=["nothing-silenced", "silencing"])
def test_almost_empty_step_equals_whole_step_reference(tmp_path, entropy_quantile):
    """GA 4, steps_per_generation 1 and truncated completions masked: each step keeps 1-2 tokens, so the count TRL
    divides by (kept * steps_per_generation / GA) is below 1, where TRL clamps it to 1. The step must still be the
    paper's objective, whether or not anything is silenced."""
    trainer = recording_trainer(
        tmp_path,
        gradient_accumulation_steps=4,
        steps_per_generation=1,
        seed=3,
        max_completion_length=2,
        mask_truncated_completions=True,
        spurious_entropy_quantile=entropy_quantile,
    )
    trainer.train()
    moved = False
    for step in trainer.steps:
        tokens = sum(int(inputs["completion_mask"].sum()) for inputs in step["inputs"])
        assert 0 < tokens < 4, "each step must keep fewer tokens than GA / steps_per_generation"
        reference = reference_of(trainer, step)
        assert_step_matches(step, reference, step["loss"])
        moved |= any(bool(grad.abs().sum() > 0) for grad in reference["grads"].values())
    assert moved, "some step must have a gradient"


class ExtraPolicyPass(RecordingSTAPOTrainer):
    """Makes one more gradient-free pass over the policy, on the batch's rows in reverse order, before or after each
    of TRL's: another pass over the same model, as TRL makes for the reference through a disabled PEFT adapter."""

    extra_pass = "before"

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *args, **kwargs):
        extra = not torch.is_grad_enabled() and model is self.model
        forward = super()._get_per_token_logps_and_entropies
        if extra and self.extra_pass == "before":
            forward(model, input_ids.flip(0), attention_mask.flip(0), *args, **kwargs)
        result = forward(model, input_ids, attention_mask, *args, **kwargs)
        if extra and self.extra_pass == "after":
            forward(model, input_ids.flip(0), attention_mask.flip(0), *args, **kwargs)
        return result


class ExtraPolicyPassAfter(ExtraPolicyPass):
    extra_pass = "after"


@pytest.mark.parametrize("variant", ["reference-model", "peft-reference", "extra-pass-before", "extra-pass-after"])
def test_generation_time_entropies_are_the_policys_own(tmp_path, variant):
    """With steps_per_generation > GA, the first step reuses the entropies of TRL's old-log-prob pass; whatever other
    passes TRL makes around it (the reference model's, the reference through a disabled LoRA adapter, another pass
    over the policy), they must be the policy's entropies on the step's own batch."""
    from peft import LoraConfig
    from test_trainer import saved_tiny_model

    trainer_class = {"extra-pass-before": ExtraPolicyPass, "extra-pass-after": ExtraPolicyPassAfter}.get(
        variant, RecordingSTAPOTrainer
    )
    extra = {}
    if variant == "reference-model":
        extra = dict(beta=0.04, model=saved_tiny_model(tmp_path))
    elif variant == "peft-reference":  # a LoRA adapter that changes the outputs from the start
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        extra = dict(beta=0.04, trainer_kwargs={"peft_config": lora})
    trainer = build_trainer(
        trainer_class,
        STAPOConfig,
        tmp_path / "out",
        reward_funcs=digit_count_reward,
        train_dataset=addition_dataset(64),
        steps_per_generation=2,
        max_steps=1,
        **STEP_CASE_SETTINGS,
        **extra,
    )
    trainer.train()
    (step,) = trainer.steps
    (inputs,) = step["inputs"]
    (reused_logps, reused_entropies, _) = step["scores"][0]
    assert torch.equal(reused_logps, inputs["old_per_token_logps"]), "the step must reuse TRL's generation-time pass"
    trainer.model.load_state_dict(step["weights"])
    trainer.model.eval()
    mask = inputs["completion_mask"].bool()
    torch.testing.assert_close(reused_entropies[mask], current_logps_and_entropies(trainer, inputs)[1][mask])
    if variant == "peft-reference":  # the reference pass through the disabled adapter gives other entropies
        with trainer.model.disable_adapter():
            _, reference_entropies = current_logps_and_entropies(trainer, inputs)
            assert not torch.allclose(reused_entropies[mask], reference_entropies[mask], atol=1e-4)
