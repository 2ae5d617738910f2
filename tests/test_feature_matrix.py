"""Every GRPOTrainer feature of TRL 1.16 a user can switch on, through real `trainer.train()` with generation.

Each row is one TRL switch on the tiny model from a saved folder (as a user passes a model id), 1-2 optimizer steps on
CPU, built the way a GRPO user moves over: a `GRPOConfig`, then `STAPOConfig.from_grpo_config`. Two tests per row:
- STAPOTrainer with S2T on in the default step scope, tau_p = 0.5 so that tokens are silenced (a random tiny model
  spreads its probability over its whole vocabulary, so every positive-advantage token is a candidate): the run
  finishes, the `stapo/*` metrics are logged every step, tokens were silenced, the trainable parameters moved, and
  the row's own evidence that the switch acted is logged;
- GRPOTrainer and STAPOTrainer with S2T off from the same seed: the same parameters and the same logged losses, bit
  for bit.
A feature S2T cannot work with is refused by `STAPOConfig` before anything is built (`REFUSED`).
"""

import string
from dataclasses import dataclass, field

import pytest
import torch
from conftest import addition_dataset, digit_count_reward, tiny_cpu_settings
from datasets import Dataset
from transformers import Qwen3ForSequenceClassification, Qwen3MoeConfig, Qwen3MoeForCausalLM
from trl import GRPOConfig, GRPOTrainer

from stapo_trl import STAPOConfig, STAPOTrainer
from stapo_trl.tiny import build_addition_tokenizer, build_char_tokenizer, build_tiny_qwen3, qwen3_config

SILENCING = dict(spurious_prob_threshold=0.5, spurious_entropy_quantile=0.75)
EOS = build_addition_tokenizer().eos_token_id


def chat_dataset():
    """Conversational prompts, as tool-calling runs take them."""
    return Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {a}*3?"}]} for a in range(16)])


def message_digit_reward(completions, **kwargs):
    """`digit_count_reward` for conversational completions (lists of messages)."""
    return digit_count_reward(["".join(message["content"] or "" for message in turns) for turns in completions])


def brevity_reward(completions, **kwargs):
    return [-float(len(completion)) for completion in completions]


def length_reward(completions, **kwargs):
    return [float(len(completion)) / 8.0 for completion in completions]


@dataclass
class Row:
    """A TRL switch: `config` goes to `GRPOConfig`, `trainer(resources)` returns trainer arguments, `model` names the
    saved model (a `Resources` attribute)."""

    config: dict = field(default_factory=dict)
    trainer: object = None
    model: str = "model"
    steps: int = 1
    logs_eval: bool = False
    evidence: tuple = ()  # metrics that must be > 0 in every logged step: the switch did something


class AddingEnvironment:
    """An environment for `environment_factory`: its tool adds two numbers, and it owns the reward (the last sum)."""

    def reset(self, **kwargs):
        self.total = 0

    def add(self, a: int, b: int) -> int:
        """Add two numbers.

        Args:
            a: The first number.
            b: The second number.
        """
        self.total = a + b
        return self.total

    def get_reward(self):
        return float(self.total)


def scripted_rollout(prompts, trainer):
    """A `rollout_func` that does not sample the policy: one token string per prompt (TRL repeats each prompt
    `num_generations` times), drawn from a generator seeded by the prompt and its place (the same in every run),
    ending with EOS."""
    tokenizer = trainer.processing_class
    prompt_ids, completion_ids = [], []
    for index, prompt in enumerate(prompts):
        ids = tokenizer(prompt)["input_ids"]
        generator = torch.Generator().manual_seed(sum(ids) + index)
        length = int(torch.randint(1, trainer.max_completion_length, (1,), generator=generator))
        prompt_ids.append(ids)
        completion_ids.append(torch.randint(4, len(tokenizer), (length,), generator=generator).tolist() + [EOS])
    logprobs = [[0.0] * len(ids) for ids in completion_ids]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


# Whole tool calls as single tokens of the chat tokenizer, favoured at sampling: the random tiny model then calls
# tools in most completions (with different arguments, so that rewards differ).
TOOL_CALLS = ['<tool_call>\n{"name": "add", "arguments": {"a": %d, "b": 2}}\n</tool_call>' % a for a in (1, 5)]


def chat_tokenizer():
    """Every printable character, the tool calls, and Qwen3's chat template (whose tool calls TRL parses)."""
    from trl.chat_template_utils import qwen3_chat_template

    tokenizer = build_char_tokenizer([string.printable])
    specials = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials + TOOL_CALLS})
    tokenizer.chat_template = qwen3_chat_template
    return tokenizer


TOOL_CALL_BIAS = {
    "max_tool_calling_iterations": 1,
    "generation_kwargs": {
        "sequence_bias": [[[token], 3.0] for token in chat_tokenizer().convert_tokens_to_ids(TOOL_CALLS)]
    },
}


ROWS = {
    "dapo (default)": Row(),
    "beta > 0 (reference model)": Row({"beta": 0.04}),
    "sync_ref_model": Row(
        {"beta": 0.04, "sync_ref_model": True, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5}, steps=2
    ),
    "use_bias_correction_kl": Row({"beta": 0.04, "use_bias_correction_kl": True}),
    **{f"loss_type={loss}": Row({"loss_type": loss}) for loss in ("grpo", "bnpo", "dr_grpo", "sapo", "vespo")},
    "loss_type=cispo": Row({"loss_type": "cispo", "epsilon_high": 5.0}),
    "loss_type=luspo": Row({"loss_type": "luspo", "importance_sampling_level": "sequence"}),
    "importance_sampling_level=sequence": Row({"importance_sampling_level": "sequence"}),
    "num_iterations > 1": Row({"num_iterations": 2}, steps=2),
    "steps_per_generation > GA": Row({"steps_per_generation": 2}, steps=2),
    "gradient_accumulation_steps > 1": Row({"gradient_accumulation_steps": 2}),
    "mask_truncated_completions": Row(  # EOS favoured at sampling, so that some completions end and some are cut
        {"mask_truncated_completions": True, "generation_kwargs": {"sequence_bias": [[[EOS], 1.0]]}},
        lambda r: {"reward_funcs": brevity_reward},
        evidence=("completions/clipped_ratio",),
    ),
    "reward_weights (several reward functions)": Row(
        {"reward_weights": [1.0, 0.5]}, lambda r: {"reward_funcs": [digit_count_reward, length_reward]}
    ),
    "multi_objective_aggregation=normalize_then_sum": Row(
        {"multi_objective_aggregation": "normalize_then_sum"},
        lambda r: {"reward_funcs": [digit_count_reward, length_reward]},
    ),
    "reward model by path": Row(trainer=lambda r: {"reward_funcs": [r.reward_model, digit_count_reward]}),
    "scale_rewards=batch": Row({"scale_rewards": "batch"}),
    "scale_rewards=none": Row({"scale_rewards": "none"}),
    "iterable train dataset": Row(trainer=lambda r: {"train_dataset": addition_dataset(16).to_iterable_dataset()}),
    "eval during training": Row(
        {"eval_strategy": "steps", "eval_steps": 1, "per_device_eval_batch_size": 2},
        lambda r: {"eval_dataset": addition_dataset(4)},
        logs_eval=True,
    ),
    "top_entropy_quantile": Row({"top_entropy_quantile": 0.5}),
    "PEFT (LoRA)": Row(trainer=lambda r: {"peft_config": r.lora()}),
    "PEFT (LoRA) with beta > 0": Row({"beta": 0.04}, lambda r: {"peft_config": r.lora()}),
    "activation_checkpointing": Row({"activation_checkpointing": True}),  # transformers 5.25's gradient_checkpointing
    "off_policy_mask_threshold": Row({"off_policy_mask_threshold": 0.5, "steps_per_generation": 2}, steps=2),
    "delta (two-sided clipping)": Row({"delta": 1.5, "num_iterations": 2}, steps=2),
    "entropy_coef (entropy bonus)": Row({"entropy_coef": 0.01}),
    "use_adaptive_entropy": Row({"use_adaptive_entropy": True, "entropy_target": 5.0}),
    "temperature": Row({"temperature": 0.7}),
    "pad_to_multiple_of": Row({"pad_to_multiple_of": 8}),
    "rollout_func": Row(trainer=lambda r: {"rollout_func": scripted_rollout, "reward_funcs": length_reward}),
    "router_aux_loss_coef (MoE)": Row({"router_aux_loss_coef": 0.01}, model="moe_model"),
    "tools": Row(
        TOOL_CALL_BIAS,
        lambda r: {
            "reward_funcs": message_digit_reward,
            "tools": [add],
            "processing_class": r.chat_tokenizer,
            "train_dataset": chat_dataset(),
        },
        model="chat_model",
        evidence=("tools/call_frequency",),
    ),
    "environment_factory (no reward_funcs)": Row(
        TOOL_CALL_BIAS,
        lambda r: {
            "reward_funcs": None,
            "environment_factory": AddingEnvironment,
            "processing_class": r.chat_tokenizer,
            "train_dataset": chat_dataset(),
        },
        model="chat_model",
        evidence=("tools/call_frequency",),
    ),
}

REFUSED = {
    "use_liger_kernel": (
        {"use_liger_kernel": True},
        "use_liger_kernel=True is not supported by STAPO: the Liger GRPO loss never exposes the per-token "
        "probabilities and entropies that S2T needs",
    ),
}


class Resources:
    """Saved tiny models (policy, MoE policy, chat policy, reward model) and their tokenizers, built once."""

    def __init__(self, root):
        self.tokenizer = build_addition_tokenizer()
        self.model = self._save(build_tiny_qwen3(self.tokenizer, "test"), self.tokenizer, root / "model")
        moe_config = Qwen3MoeConfig(
            **{
                **qwen3_config("test").to_dict(),
                "vocab_size": len(self.tokenizer),
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 32,
                "output_router_logits": True,
                "pad_token_id": self.tokenizer.pad_token_id,
                "eos_token_id": self.tokenizer.eos_token_id,
            }
        )
        torch.manual_seed(0)
        self.moe_model = self._save(Qwen3MoeForCausalLM(moe_config), self.tokenizer, root / "moe-model")
        self.reward_model = self._save(self._reward_model(), self.tokenizer, root / "reward-model")
        self.chat_tokenizer = chat_tokenizer()
        self.chat_model = self._save(
            build_tiny_qwen3(self.chat_tokenizer, "test"), self.chat_tokenizer, root / "chat-model"
        )

    @staticmethod
    def _save(model, tokenizer, path):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return str(path)

    def _reward_model(self):
        config = qwen3_config(
            "test", vocab_size=len(self.tokenizer), num_labels=1, pad_token_id=self.tokenizer.pad_token_id
        )
        torch.manual_seed(1)
        return Qwen3ForSequenceClassification(config)

    @staticmethod
    def lora():
        from peft import LoraConfig

        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    return Resources(tmp_path_factory.mktemp("matrix"))


def grpo_config(output_dir, row):
    # Activation checkpointing stays off (conftest's settings) but in its own row.
    settings = tiny_cpu_settings(output_dir, learning_rate=1e-3, epsilon_high=0.28, max_steps=row.steps)
    return GRPOConfig(**{**settings, **row.config})


def train(trainer_class, args, row, resources):
    """Build a trainer for `row` and train it; returns it and its trainable parameters from before training."""
    kwargs = {
        "model": getattr(resources, row.model),
        "reward_funcs": digit_count_reward,
        "args": args,
        "train_dataset": addition_dataset(16),
        "processing_class": resources.tokenizer,
    }
    kwargs.update(row.trainer(resources) if row.trainer else {})
    trainer = trainer_class(**kwargs)
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters() if param.requires_grad}
    trainer.train()
    return trainer, before


def logged(trainer, prefix=""):
    return [entry for entry in trainer.state.log_history if f"{prefix}stapo/masked_frac" in entry]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(ROWS))
def test_feature_with_s2t_on(tmp_path, resources, name):
    row = ROWS[name]
    args = STAPOConfig.from_grpo_config(grpo_config(tmp_path, row), **SILENCING)
    assert args.spurious_stats_scope == "step" and args.silence_spurious_tokens
    trainer, before = train(STAPOTrainer, args, row, resources)
    entries = logged(trainer)
    assert len(entries) == row.steps
    assert sum(entry["stapo/masked_tokens"] for entry in entries) > 0, "no token was silenced"
    assert all(entry["stapo/nonfinite_tokens"] == 0 for entry in entries)
    parameters = dict(trainer.model.named_parameters())
    assert any(not torch.equal(parameters[name], value) for name, value in before.items()), "no parameter moved"
    if row.logs_eval:
        assert logged(trainer, "eval_"), "evaluation logged no stapo metrics"
    for metric in row.evidence:
        assert all(entry[metric] > 0 for entry in entries), metric


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(ROWS))
def test_feature_with_s2t_off_equals_grpo_trainer(tmp_path, resources, name):
    row = ROWS[name]
    grpo, _ = train(GRPOTrainer, grpo_config(tmp_path / "grpo", row), row, resources)
    args = STAPOConfig.from_grpo_config(grpo_config(tmp_path / "stapo", row), silence_spurious_tokens=False)
    stapo, _ = train(STAPOTrainer, args, row, resources)
    losses = [[entry["loss"] for entry in trainer.state.log_history if "loss" in entry] for trainer in (grpo, stapo)]
    assert losses[0] == losses[1] and len(losses[0]) == row.steps
    stapo_parameters = dict(stapo.model.named_parameters())
    for name, param in grpo.model.named_parameters():
        assert torch.equal(param, stapo_parameters[name]), name


@pytest.mark.parametrize("name", list(REFUSED))
def test_feature_refused_up_front(tmp_path, name):
    settings, reason = REFUSED[name]
    with pytest.raises(ValueError, match=reason):
        STAPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], **settings)
