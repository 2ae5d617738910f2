"""Shared offline fixtures: a tiny Qwen3 model, a tokenizer built on the fly and trainers around them."""

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from datasets import Dataset

from stapo_trl.tiny import build_addition_tokenizer, build_char_tokenizer, build_tiny_qwen3

DATASET_FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def tiny_tokenizer():
    return build_addition_tokenizer()


def tiny_model(tokenizer, seed=0, max_position_embeddings=128):
    return build_tiny_qwen3(tokenizer, "test", seed=seed, max_position_embeddings=max_position_embeddings)


@pytest.fixture(scope="module")
def fixture_model_dir(tmp_path_factory):
    """A saved tiny model whose character tokenizer covers the training and benchmark fixtures (`DATASET_FIXTURES`)."""
    corpus = [path.read_text() for path in sorted(DATASET_FIXTURES.glob("*.jsonl"))] + ["\\boxed{}0123456789"]
    tokenizer = build_char_tokenizer(corpus)
    directory = tmp_path_factory.mktemp("tiny-model")
    tiny_model(tokenizer, max_position_embeddings=4096).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def current_logps_and_entropies(trainer, inputs):
    """``(B, T)`` log-probs and entropies of the trainer's policy on a micro-batch, through TRL's own fused pass."""
    from trl import GRPOTrainer

    with torch.no_grad():
        logps, entropies, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            trainer,
            trainer.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].size(1),
            compute_entropy=True,
        )
    return logps, entropies


def addition_dataset(num=16):
    rows = [{"prompt": f"What is {a}+{b}?", "answer": str(a + b)} for a in range(10) for b in range(10)]
    return Dataset.from_list(rows[:num])


def contains_answer_reward(completions, answer, **kwargs):
    return [1.0 if gold in completion else 0.0 for completion, gold in zip(completions, answer, strict=True)]


def digit_count_reward(completions, **kwargs):
    """A reward that varies even for a random model: the number of digits in the completion."""
    return [float(sum(character.isdigit() for character in completion)) for completion in completions]


def tiny_cpu_settings(output_dir, **overrides):
    """CPU-friendly GRPOConfig/STAPOConfig settings for the tiny model (4 completions per micro-batch, 2 per prompt, 6
    tokens each, a log every step, no checkpoints); `overrides` win."""
    settings = dict(
        output_dir=str(output_dir),
        bf16=False,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        activation_checkpointing=False,  # TRL's default (on) only costs time on a tiny model; tests that need it say so
    )
    return {**settings, **overrides}


def build_trainer(
    trainer_class,
    config_class,
    output_dir,
    model=None,
    reward_funcs=contains_answer_reward,
    train_dataset=None,
    trainer_kwargs=None,
    **config_kwargs,
):
    """A trainer on the tiny model (and 16 addition prompts unless `train_dataset` is given) with CPU-friendly
    settings; `config_kwargs` override them, `trainer_kwargs` go to the trainer (`peft_config`, `eval_dataset`, ...)."""
    tokenizer = tiny_tokenizer()
    return trainer_class(
        model=model if model is not None else tiny_model(tokenizer),
        reward_funcs=reward_funcs,
        args=config_class(**tiny_cpu_settings(output_dir, **config_kwargs)),
        train_dataset=train_dataset if train_dataset is not None else addition_dataset(),
        processing_class=tokenizer,
        **(trainer_kwargs or {}),
    )


def hand_batch(tokenizer, seed=0, num_sequences=4, completion_length=6):
    """A loss-time batch as `GRPOTrainer._prepare_inputs` hands it to `compute_loss`.

    Left-padded prompts, right-padded completions, two positive and two negative advantages, and old
    log-probabilities a little off the current policy so that clipping is exercised.
    """
    generator = torch.Generator().manual_seed(seed)
    prompts = ["What is 1+2?", "What is 13+4?", "What is 5+6?", "What is 7+18?"][:num_sequences]
    encoded = tokenizer(prompts, padding=True, return_tensors="pt")
    vocab = len(tokenizer)
    completion_ids = torch.randint(4, vocab, (num_sequences, completion_length), generator=generator)
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 4:] = 0
    completion_mask[3, 2:] = 0
    completion_ids[completion_mask == 0] = tokenizer.pad_token_id
    advantages = torch.tensor([1.0, 0.7, -1.0, -0.7])[:num_sequences]
    old_per_token_logps = -3.2 + 0.3 * torch.randn(num_sequences, completion_length, generator=generator)
    return {
        "prompt_ids": encoded["input_ids"],
        "prompt_mask": encoded["attention_mask"],
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old_per_token_logps,
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_and_grads(trainer, inputs, gradient_accumulation_steps=1):
    """One `compute_loss` + backward on a fresh copy of `inputs`; returns the loss and the parameter gradients.

    With `spurious_stats_scope="step"` the batch is a whole optimizer step of one micro-batch.
    """
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = gradient_accumulation_steps
    inputs = copy.deepcopy(inputs)
    if getattr(trainer, "_scores_whole_steps", False):  # a one-micro-batch step, decided as `Trainer.train()` decides a step
        trainer._step_plan = trainer._plan_step([inputs])
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {name: param.grad.clone() for name, param in trainer.model.named_parameters() if param.grad is not None}
    return loss.detach(), grads


def loss_grads_and_spurious(trainer, inputs):
    """`loss_and_grads` on one micro-batch, plus the `SpuriousTokens` the trainer found in it."""
    import stapo_trl.trainer as trainer_module

    find_spurious_tokens_in_batches = trainer_module.find_spurious_tokens_in_batches
    found = []

    def recording(*args, **kwargs):
        result = find_spurious_tokens_in_batches(*args, **kwargs)
        found.extend(result)
        return result

    trainer_module.find_spurious_tokens_in_batches = recording
    try:
        loss, grads = loss_and_grads(trainer, inputs)
    finally:
        trainer_module.find_spurious_tokens_in_batches = find_spurious_tokens_in_batches
    (spurious,) = found
    return loss, grads, spurious


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()
