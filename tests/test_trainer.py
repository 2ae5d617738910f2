"""STAPOTrainer against TRL's GRPOTrainer and against the STAPO objective computed by hand."""

import copy
import dataclasses
import math

import pytest
import torch
from conftest import (
    build_trainer,
    contains_answer_reward,
    current_logps_and_entropies,
    hand_batch,
    loss_and_grads,
    tiny_model,
    tiny_tokenizer,
)
from trl import GRPOConfig, GRPOTrainer

from stapo_trl import STAPOConfig, STAPOTrainer
from stapo_trl.s2t import stapo_policy_loss
from stapo_trl.trainer import PolicyScores

LOSS_TYPES = ["dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo"]


def loss_type_settings(loss_type):
    settings = {"loss_type": loss_type, "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0}
    if loss_type == "luspo":
        settings["importance_sampling_level"] = "sequence"
    if loss_type == "cispo":
        settings["epsilon_high"] = 5.0
    return settings


def saved_tiny_model(tmp_path):
    """A tiny model saved to disk: with beta > 0, TRL loads the reference model from its path."""
    path = tmp_path / "tiny-model"
    tiny_model(tiny_tokenizer()).save_pretrained(path)
    return str(path)


def trainer_pair(tmp_path, **settings):
    """GRPOTrainer and STAPOTrainer with S2T off, on identical copies of one tiny model."""
    if settings.get("beta", 0.0) != 0.0:
        model = saved_tiny_model(tmp_path)
    else:
        model = tiny_model(tiny_tokenizer())
    grpo = build_trainer(GRPOTrainer, GRPOConfig, tmp_path / "grpo", model=copy.deepcopy(model), **settings)
    stapo = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path / "stapo", model=model, silence_spurious_tokens=False, **settings
    )
    return grpo, stapo


def assert_same(loss_a, grads_a, loss_b, grads_b):
    assert torch.equal(loss_a, loss_b), f"{loss_a.item()} != {loss_b.item()}"
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def spurious_by_hand(logps, entropies, advantages, mask, tau_p, q):
    """The S2T rule written out with plain Python loops, independently of `stapo_trl.s2t`."""
    batch, length = logps.shape
    candidates = [
        (i, t)
        for i in range(batch)
        for t in range(length)
        if mask[i, t] and advantages[i] > 0 and math.exp(logps[i, t].item()) < tau_p
    ]
    values = sorted(entropies[i, t].item() for i, t in candidates)
    position = q * (len(values) - 1)
    low = int(position)
    tau_h = values[low] + (position - low) * (values[min(low + 1, len(values) - 1)] - values[low])
    spurious = torch.zeros(batch, length, dtype=torch.bool)
    for i, t in candidates:
        if entropies[i, t].item() < tau_h:
            spurious[i, t] = True
    return spurious


def thresholds_that_silence_some(logps, advantages, mask):
    """A tau_p between the probabilities of the positive-advantage tokens, so the test batch has spurious tokens."""
    positive = (advantages > 0).unsqueeze(1) & mask.bool()
    return torch.quantile(logps[positive].exp(), 0.6).item()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_s2t_off_equals_grpo_trainer(tmp_path, loss_type):
    grpo, stapo = trainer_pair(tmp_path, **loss_type_settings(loss_type))
    inputs = hand_batch(grpo.processing_class)
    assert_same(*loss_and_grads(grpo, inputs), *loss_and_grads(stapo, inputs))


@pytest.mark.parametrize(
    "settings",
    [
        {"top_entropy_quantile": 0.2},
        {"beta": 0.04},
        {"entropy_coef": 0.01},
        {"num_iterations": 2},
        {"loss_type": "grpo", "top_entropy_quantile": 0.5, "entropy_coef": 0.01},
        {"activation_checkpointing": True},
    ],
    ids=["entropy20", "kl", "entropy-bonus", "num-iterations", "grpo-combined", "activation-checkpointing"],
)
def test_s2t_off_equals_grpo_trainer_with_features(tmp_path, settings):
    grpo, stapo = trainer_pair(tmp_path, **{**loss_type_settings(settings.get("loss_type", "dapo")), **settings})
    inputs = hand_batch(grpo.processing_class)
    if grpo.beta != 0.0:
        inputs["ref_per_token_logps"] = inputs["old_per_token_logps"] - 0.1
    assert_same(*loss_and_grads(grpo, inputs), *loss_and_grads(stapo, inputs))


def test_s2t_off_equals_grpo_trainer_with_gradient_accumulation(tmp_path):
    grpo, stapo = trainer_pair(tmp_path, gradient_accumulation_steps=2, **loss_type_settings("dapo"))
    inputs = hand_batch(grpo.processing_class)
    assert_same(*loss_and_grads(grpo, inputs, 2), *loss_and_grads(stapo, inputs, 2))


def s2t_trainer(tmp_path, inputs_seed=0, **settings):
    """A STAPOTrainer whose tau_p is chosen so that the hand batch has spurious tokens; returns it and the truth."""
    model = saved_tiny_model(tmp_path) if settings.get("beta", 0.0) != 0.0 else None
    trainer = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path / "s2t", model=model, spurious_entropy_quantile=0.5, **settings
    )
    inputs = hand_batch(trainer.processing_class, seed=inputs_seed)
    logps, entropies = current_logps_and_entropies(trainer, inputs)
    tau_p = thresholds_that_silence_some(logps, inputs["advantages"], inputs["completion_mask"])
    trainer.args.spurious_prob_threshold = tau_p
    spurious = spurious_by_hand(logps, entropies, inputs["advantages"], inputs["completion_mask"], tau_p, 0.5)
    assert 0 < spurious.sum() < inputs["completion_mask"].sum()
    return trainer, inputs, spurious, logps


def grads_of_logps(trainer, inputs, gradient_accumulation_steps=1):
    """d loss / d per-token log-prob, captured on the tensor the loss consumes."""
    captured = {}
    original = STAPOTrainer._get_per_token_logps_and_entropies

    def capture(self, *args, **kwargs):
        logps, entropies, aux = original(self, *args, **kwargs)
        if logps.requires_grad:
            logps.retain_grad()
            captured["logps"] = logps
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = capture.__get__(trainer)
    try:
        loss, grads = loss_and_grads(trainer, inputs, gradient_accumulation_steps)
    finally:
        del trainer._get_per_token_logps_and_entropies
    return loss, grads, captured["logps"].grad


def test_spurious_tokens_get_exactly_zero_gradient(tmp_path):
    trainer, inputs, spurious, logps = s2t_trainer(tmp_path)
    _, _, logp_grads = grads_of_logps(trainer, inputs)
    # kept tokens inside the clip range must still learn (clipped ones have zero gradient by PPO's design)
    ratio = (logps - inputs["old_per_token_logps"]).exp()
    positive = (inputs["advantages"] > 0).unsqueeze(1)
    unclipped = torch.where(positive, ratio < 1.28, ratio > 0.8)
    learning = inputs["completion_mask"].bool() & ~spurious & unclipped
    assert learning.any()
    assert torch.all(logp_grads[spurious] == 0.0)
    assert torch.all(logp_grads[learning] != 0.0)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_s2t_loss_equals_renormalised_reference(tmp_path, loss_type):
    trainer, inputs, spurious, logps = s2t_trainer(tmp_path, **loss_type_settings(loss_type))
    loss, _, _ = grads_of_logps(trainer, inputs)
    keep = inputs["completion_mask"].bool() & ~spurious
    old, advantages = inputs["old_per_token_logps"], inputs["advantages"]
    if loss_type in ("dapo", "bnpo"):
        expected = stapo_policy_loss(logps, old, advantages, keep, 0.2, 0.28)
    elif loss_type == "grpo":
        per_sequence = [
            stapo_policy_loss(logps[i : i + 1], old[i : i + 1], advantages[i : i + 1], keep[i : i + 1], 0.2, 0.28)
            for i in range(len(advantages))
        ]
        expected = torch.stack(per_sequence).mean()
    else:  # dr_grpo: silenced tokens drop out of the sum, the denominator stays B * max_completion_length
        num_kept = keep.sum()
        expected = stapo_policy_loss(logps, old, advantages, keep, 0.2, 0.28) * num_kept / (4 * 6)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)


def test_dapo_normaliser_with_gradient_accumulation(tmp_path):
    """micro_batch scope with accumulation: TRL's normaliser is scaled by this micro-batch's kept/total ratio."""
    trainer, inputs, spurious, logps = s2t_trainer(
        tmp_path, gradient_accumulation_steps=2, steps_per_generation=4, spurious_stats_scope="micro_batch"
    )
    loss, _, _ = grads_of_logps(trainer, inputs, gradient_accumulation_steps=2)
    keep = inputs["completion_mask"].bool() & ~spurious
    total = inputs["completion_mask"].sum()
    # TRL: normaliser = num_items / processes * accumulation / steps_per_generation = 18 * 2 / 4
    trl_normaliser = total.float() * 2 / 4
    reference = stapo_policy_loss(logps, inputs["old_per_token_logps"], inputs["advantages"], keep, 0.2, 0.28)
    expected = reference * keep.sum() / (trl_normaliser * keep.sum() / total)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def one_silenced_token_threshold(logps, entropies, inputs):
    """With tau_p = 1, an absolute tau_h between the two lowest entropies of positive tokens silences exactly one."""
    positive = inputs["completion_mask"].bool() & (inputs["advantages"] > 0).unsqueeze(1)
    lowest = torch.sort(entropies[positive]).values[:2]
    return ((lowest[0] + lowest[1]) / 2).item()


@pytest.mark.parametrize("scope", ["step", "micro_batch"])
def test_normaliser_has_no_jump_when_the_first_token_is_silenced(tmp_path, scope):
    """GA 1, steps_per_generation 4: one micro-batch of 18 tokens out of a generation batch of 53.

    TRL divides every micro-step by the generation batch's average, 53 / 4 = 13.25. Silencing one token moves the
    denominator by one token's share: micro_batch scales TRL's by 17/18; step divides by the step's kept tokens, 18
    then 17 (the paper's rule).
    """
    denominators = {}
    for case, absolute_tau_h in (("none", 0.0), ("one", None)):
        trainer = build_trainer(
            STAPOTrainer, STAPOConfig, tmp_path / case, gradient_accumulation_steps=1, steps_per_generation=4,
            spurious_stats_scope=scope, spurious_prob_threshold=1.0, spurious_entropy_threshold=0.0,
        )  # fmt: skip
        inputs = hand_batch(trainer.processing_class)
        inputs["num_items_in_batch"] = torch.tensor(53)
        logps, entropies = current_logps_and_entropies(trainer, inputs)
        if absolute_tau_h is None:
            trainer.args.spurious_entropy_threshold = one_silenced_token_threshold(logps, entropies, inputs)
        loss, _ = loss_and_grads(trainer, inputs)
        metrics = trainer._finish_s2t_window("train")
        assert metrics["stapo/masked_tokens"] == (0 if case == "none" else 1)
        keep = inputs["completion_mask"].bool()
        if case == "one":
            positive = keep & (inputs["advantages"] > 0).unsqueeze(1)
            keep = keep & ~(positive & (entropies < trainer.args.spurious_entropy_threshold))
        kept_sum = stapo_policy_loss(
            logps, inputs["old_per_token_logps"], inputs["advantages"], keep, 0.2, 0.28, num_kept_tokens=1
        )
        denominators[case] = (kept_sum / loss).item()
    expected = {"micro_batch": (13.25, 13.25 * 17 / 18), "step": (18.0, 17.0)}[scope]
    assert denominators["none"] == pytest.approx(expected[0], rel=1e-5)
    assert denominators["one"] == pytest.approx(expected[1], rel=1e-5)


@pytest.mark.parametrize(
    ("scope", "gradient_accumulation_steps", "steps_per_generation"),
    [("micro_batch", 1, 4), ("micro_batch", 2, 2), ("micro_batch", 4, 1), ("step", 1, 1), ("step", 2, 2)],
)
def test_nothing_silenced_is_bit_identical_to_grpo_trainer(
    tmp_path, scope, gradient_accumulation_steps, steps_per_generation
):
    """S2T on with nothing silenced leaves TRL's loss untouched wherever TRL's normaliser is the scope's own count:
    every shape for micro_batch, gradient accumulation == steps_per_generation for step (the whole step is the
    generation batch)."""
    shape = {"gradient_accumulation_steps": gradient_accumulation_steps, "steps_per_generation": steps_per_generation}
    grpo, _ = trainer_pair(tmp_path, **shape, **loss_type_settings("dapo"))
    stapo = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path / "on", model=copy.deepcopy(grpo.model), spurious_stats_scope=scope,
        spurious_prob_threshold=1.0, spurious_entropy_threshold=0.0, **shape,
    )  # fmt: skip
    inputs = hand_batch(grpo.processing_class)
    assert_same(
        *loss_and_grads(grpo, inputs, gradient_accumulation_steps),
        *loss_and_grads(stapo, inputs, gradient_accumulation_steps),
    )
    metrics = stapo._finish_s2t_window("train")
    assert metrics["stapo/masked_tokens"] == 0 and metrics["stapo/candidate_frac"] > 0


def test_a_lone_candidate_is_silenced_by_the_step_threshold(tmp_path, monkeypatch):
    """A micro-batch holding one candidate: silenced when the step's tau_h says so; never on its own."""
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, spurious_prob_threshold=0.002, gradient_accumulation_steps=2)
    lone, crowded = hand_batch(trainer.processing_class, seed=0), hand_batch(trainer.processing_class, seed=1)
    low_p, high_p = math.log(0.001), math.log(0.5)
    lone_logps = torch.full(lone["completion_ids"].shape, high_p)
    lone_logps[0, 0] = low_p  # the only candidate of this micro-batch: positive advantage, p < tau_p
    lone_entropies = torch.full(lone["completion_ids"].shape, 0.2)
    crowded_logps = torch.full(crowded["completion_ids"].shape, high_p)
    crowded_logps[0, :4] = low_p  # four candidates with entropies 1, 2, 3, 4
    crowded_entropies = torch.zeros(crowded["completion_ids"].shape)
    crowded_entropies[0, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    every_row = torch.ones(4, dtype=torch.bool)
    scores = {
        id(lone): PolicyScores(lone_logps, lone_entropies, every_row),
        id(crowded): PolicyScores(crowded_logps, crowded_entropies, every_row),
    }
    monkeypatch.setattr(trainer, "_score_step", lambda step_inputs: [scores[id(inputs)] for inputs in step_inputs])
    plan = trainer._plan_step([lone, crowded])
    # candidates' entropies {0.2, 1, 2, 3, 4}: the 0.75-quantile is 3, so 0.2, 1 and 2 are silenced
    assert plan.decisions[0].silenced.nonzero().tolist() == [[0, 0]]
    assert plan.decisions[1].silenced[0, :4].tolist() == [True, True, False, False]
    (alone,) = trainer._decide([lone], [scores[id(lone)]], "train")
    assert not alone.silenced.any()  # a lone candidate is never below its own 0.75-quantile


def test_everything_silenced_gives_zero_loss_and_zero_gradients(tmp_path):
    trainer = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path, spurious_prob_threshold=1.0, spurious_entropy_quantile=1.0
    )
    inputs = hand_batch(trainer.processing_class)
    inputs["advantages"] = torch.tensor([1.0, 0.5, 0.2, 0.1])  # every token positive: every token a candidate
    loss, grads = loss_and_grads(trainer, inputs)
    assert loss.item() == 0.0
    assert all(torch.all(grad == 0.0) for grad in grads.values())
    assert trainer._finish_s2t_window("train")["stapo/masked_frac"] == 1.0


@pytest.mark.parametrize(
    "settings",
    [
        {"top_entropy_quantile": 0.5},
        {"top_entropy_quantile": 0.5, "renormalize_entropy_mask": True},
        {"beta": 0.04},
        {"entropy_coef": 0.05},
        {"num_iterations": 2},
    ],
    ids=["entropy-mask", "entropy-mask-renormalised", "kl", "entropy-bonus", "num-iterations"],
)
def test_s2t_combines_with_trl_features(tmp_path, settings):
    trainer, inputs, spurious, _ = s2t_trainer(tmp_path, **settings)
    if trainer.beta != 0.0:
        inputs["ref_per_token_logps"] = inputs["old_per_token_logps"] - 0.1
    loss, grads, logp_grads = grads_of_logps(trainer, inputs)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    if "entropy_coef" not in settings:  # the entropy bonus acts on the entropy, not on the sampled token's log-prob
        assert torch.all(logp_grads[spurious] == 0.0)
    assert trainer._finish_s2t_window("train")["stapo/masked_tokens"] == spurious.sum().item()


def test_renormalised_entropy_mask_divides_by_kept_tokens(tmp_path):
    """20-Entropy with renormalisation: TRL's loss times total / kept (S2T off, dapo)."""
    settings = {"top_entropy_quantile": 0.5, "silence_spurious_tokens": False}
    plain = build_trainer(STAPOTrainer, STAPOConfig, tmp_path / "a", **settings)
    renormalised = build_trainer(
        STAPOTrainer, STAPOConfig, tmp_path / "b", model=copy.deepcopy(plain.model), renormalize_entropy_mask=True, **settings
    )
    inputs = hand_batch(plain.processing_class)
    _, entropies = current_logps_and_entropies(plain, inputs)
    high = GRPOTrainer.get_high_entropy_mask(plain, entropies, inputs["completion_mask"], 0.5)
    loss_plain, _ = loss_and_grads(plain, inputs)
    loss_renormalised, _ = loss_and_grads(renormalised, inputs)
    ratio = inputs["completion_mask"].sum() / high.sum()
    assert loss_renormalised.item() == pytest.approx((loss_plain * ratio).item(), rel=1e-6)
    # the logged entropy stays the mean over every completion token, not over the kept high-entropy ones
    mask = inputs["completion_mask"].bool()
    for trainer in (plain, renormalised):
        assert trainer._metrics["train"]["entropy"][-1] == pytest.approx(entropies[mask].mean().item(), rel=1e-5)


def test_vllm_importance_sampling_correction(tmp_path):
    trainer, inputs, spurious, _ = s2t_trainer(tmp_path)
    trainer.use_vllm = True  # only the loss path is exercised: TRL multiplies by the sampler's IS ratio
    trainer.vllm_importance_sampling_correction = True
    inputs["importance_sampling_ratio"] = torch.full_like(inputs["old_per_token_logps"], 0.9)
    # vLLM marks tokens it could not score with NaN; put one on a negative-advantage token, which is no candidate
    inputs["importance_sampling_ratio"][2, 0] = float("nan")
    loss, grads, logp_grads = grads_of_logps(trainer, inputs)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    assert torch.all(logp_grads[spurious] == 0.0)
    assert logp_grads[2, 0] == 0.0
    assert trainer._finish_s2t_window("train")["stapo/nonfinite_tokens"] == 1.0


def test_nonfinite_inputs_are_excluded_and_counted(tmp_path):
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path)
    inputs = hand_batch(trainer.processing_class)
    inputs["old_per_token_logps"][1, 1] = float("inf")
    inputs["advantages"][2] = float("nan")  # the whole sequence (6 tokens) is excluded
    loss, grads = loss_and_grads(trainer, inputs)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    assert trainer._finish_s2t_window("train")["stapo/nonfinite_tokens"] == 7.0


def test_metrics_are_logged(tmp_path):
    trainer, inputs, spurious, logps = s2t_trainer(tmp_path)
    loss_and_grads(trainer, inputs)
    metrics = trainer._finish_s2t_window("train")
    num_tokens = inputs["completion_mask"].sum().item()
    assert metrics["stapo/masked_tokens"] == spurious.sum().item()
    assert metrics["stapo/masked_frac"] == pytest.approx(spurious.sum().item() / num_tokens)
    assert metrics["stapo/masked_prob_mean"] == pytest.approx(logps[spurious].exp().mean().item(), rel=1e-5)
    assert 0 < metrics["stapo/candidate_frac"] <= 1
    assert metrics["stapo/entropy_p10"] <= metrics["stapo/entropy_p50"] <= metrics["stapo/entropy_p90"]
    for name in ("stapo/entropy_threshold", "stapo/masked_entropy_mean", "stapo/nonfinite_tokens"):
        assert name in metrics


def test_model_card_identity_follows_the_method(tmp_path):
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path)  # S2T on: STAPO
    assert trainer._tag_names == ["trl", "grpo", "stapo"] and trainer._name == "STAPO"
    assert trainer._paper["id"] == "2602.15620" and "author       = {Shiqi Liu and" in trainer._paper["citation"]
    assert trainer.model.model_tags == ["trl", "grpo", "stapo"]  # what TRL tags the model with
    trainer.method = "justrl"  # as stapo-train sets its --method
    assert trainer._tag_names == ["trl", "grpo", "justrl"] and trainer._name == "JustRL"
    assert trainer._paper == {"title": "JustRL: Scaling a 1.5B LLM with a Simple RL Recipe", "id": "2512.16649",
                              "citation": None}  # fmt: skip


def test_rejects_plain_grpo_config(tmp_path):
    with pytest.raises(TypeError, match="STAPOConfig"):
        build_trainer(STAPOTrainer, GRPOConfig, tmp_path)


def test_reward_funcs_are_optional_as_in_grpo_trainer(tmp_path):
    """TRL 1.16 lets an `environment_factory` own the reward, so `reward_funcs` may be left out: without any reward
    source both trainers stop at TRL's own check, not at a missing argument."""
    messages = []
    for trainer_class, config_class in ((GRPOTrainer, GRPOConfig), (STAPOTrainer, STAPOConfig)):
        args = config_class(
            output_dir=str(tmp_path / trainer_class.__name__), bf16=False, use_cpu=True, report_to=[],
            activation_checkpointing=False,
        )
        with pytest.raises(ValueError, match="No reward source provided") as raised:
            trainer_class(tiny_model(tiny_tokenizer()), args=args, processing_class=tiny_tokenizer())
        messages.append(str(raised.value))
    assert messages[0] == messages[1]


# A plain GRPOConfig() warns under transformers 5.25: TRL 1.16 sets the old name `gradient_checkpointing`.
GRPO_DEFAULTS_WARN = pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")


@GRPO_DEFAULTS_WARN
@pytest.mark.parametrize(
    "grpo_settings",
    [
        {"use_cpu": True},  # GRPOConfig's defaults (bf16 derived on, steps_per_generation derived from GA)
        {
            "bf16": False,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "generation_batch_size": 16,
            "loss_type": "grpo",
            "beta": 0.04,
            "epsilon_high": 0.3,
            "scale_rewards": True,
            "num_iterations": 2,
            "eval_strategy": "steps",
            "eval_steps": 3,
            "lr_scheduler_type": "cosine",
            "report_to": "none",
            "hub_token": "hf_secret",
        },
    ],
    ids=["default", "custom"],
)
def test_stapo_config_from_grpo_config_keeps_every_setting(tmp_path, grpo_settings):
    grpo_config = GRPOConfig(output_dir=str(tmp_path), **grpo_settings)
    config = STAPOConfig.from_grpo_config(grpo_config)
    differing = [
        field.name
        for field in dataclasses.fields(GRPOConfig)
        if field.init and getattr(config, field.name) != getattr(grpo_config, field.name)
    ]
    assert differing == []
    defaults = STAPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert config.silence_spurious_tokens
    assert config.spurious_prob_threshold == defaults.spurious_prob_threshold == 0.002
    assert config.spurious_entropy_quantile == defaults.spurious_entropy_quantile == 0.75
    assert config.spurious_stats_scope == "step"
    overridden = STAPOConfig.from_grpo_config(grpo_config, spurious_prob_threshold=0.05, learning_rate=1e-5)
    assert (overridden.spurious_prob_threshold, overridden.learning_rate) == (0.05, 1e-5)
    assert overridden.steps_per_generation == grpo_config.steps_per_generation


@GRPO_DEFAULTS_WARN
def test_grpo_config_is_refused_with_the_conversion_that_works(tmp_path):
    grpo_config = GRPOConfig(output_dir=str(tmp_path), bf16=False, report_to=[])
    with pytest.raises(TypeError, match=r"STAPOConfig\.from_grpo_config\(grpo_config\)"):
        STAPOTrainer(tiny_model(tiny_tokenizer()), contains_answer_reward, args=grpo_config)
    assert isinstance(STAPOConfig.from_grpo_config(grpo_config), STAPOConfig)
