"""Sampling a group of completions with their token ids, laid out as TRL lays out a batch, and GRPO's group-normalised
advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Rollout:
    """`num_generations` sampled completions for each of a few prompts, laid out as TRL lays out a batch.

    Rows are grouped: row `i` answers problem `i // num_generations`. Prompt ids are left-padded, completion ids
    right-padded; `completion_mask` covers the tokens up to and including the first end-of-sequence token.
    """

    prompt_texts: list[str]
    answers: list[str]
    completions: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    num_generations: int

    @property
    def groups(self) -> list[int]:
        return [row // self.num_generations for row in range(len(self.completions))]


def _stop_token_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if value is not None:
            ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids


@torch.no_grad()
def sample_group(
    model,
    tokenizer,
    prompts: Sequence[Any],
    answers: Sequence[Any],
    num_generations: int = 8,
    max_new_tokens: int = 512,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    batch_size: int = 32,
) -> Rollout:
    """Sample `num_generations` completions per prompt, keeping the token ids (text alone would not do: decoding
    and re-encoding need not give back the sampled tokens).

    Prompts are rendered and tokenized as in training and evaluation (`stapo_trl.evaluation.format_prompt`: the chat
    template for conversational prompts when the tokenizer has one). Decoding uses the evaluation harness's neutral
    settings (no top-k, no repetition penalty), so the sampled tokens follow the policy at `temperature`.
    """
    from ..evaluation import SamplingParams, TransformersGenerator, format_prompt

    generator = TransformersGenerator(model, tokenizer)
    config = generator._generation_config(
        SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    )
    add_special_tokens = not getattr(tokenizer, "chat_template", None)
    texts = [format_prompt(prompt, tokenizer) for prompt in prompts]
    expanded = [text for text in texts for _ in range(num_generations)]
    gold = [str(answer) for answer in answers for _ in range(num_generations)]
    device = next(model.parameters()).device
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)

    was_training = model.training
    model.eval()
    prompt_rows, completion_rows = [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(expanded), batch_size):
                chunk = expanded[start : start + batch_size]
                encoded = tokenizer(
                    chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=add_special_tokens
                ).to(device)
                output = model.generate(**encoded, generation_config=config)
                width = encoded["input_ids"].shape[1]
                for row in range(len(chunk)):
                    prompt = encoded["input_ids"][row][encoded["attention_mask"][row].bool()].tolist()
                    prompt_rows.append(prompt)
                    completion_rows.append(output[row, width:].tolist())
    finally:
        model.train(was_training)

    # Cut each completion after its first stop token, as TRL's completion mask does.
    cut = []
    for ids in completion_rows:
        end = next((i for i, token in enumerate(ids) if token in stop_ids), None)
        cut.append(ids if end is None else ids[: end + 1])
    prompt_len = max(len(p) for p in prompt_rows)
    completion_len = max(1, max(len(c) for c in cut))
    n = len(cut)
    prompt_ids = torch.full((n, prompt_len), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((n, prompt_len), dtype=torch.long)
    completion_ids = torch.full((n, completion_len), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((n, completion_len), dtype=torch.long)
    for row, (prompt, completion) in enumerate(zip(prompt_rows, cut)):
        prompt_ids[row, prompt_len - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, prompt_len - len(prompt) :] = 1
        if completion:
            completion_ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
            completion_mask[row, : len(completion)] = 1
    completions = [
        tokenizer.decode([t for t in ids if t not in stop_ids], skip_special_tokens=True) for ids in cut
    ]
    return Rollout(
        prompt_texts=expanded,
        answers=gold,
        completions=completions,
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        num_generations=num_generations,
    )


def group_advantages(rewards: Sequence[float] | torch.Tensor, num_generations: int, scale: bool = True) -> torch.Tensor:
    """GRPO's advantages as TRL 1.16 computes them (`scale_rewards="group"`): the reward minus its group's mean,
    divided by the group's (unbiased) standard deviation + 1e-4. A group whose rewards are all equal gets 0."""
    from trl.trainer.utils import nanstd

    rewards = torch.as_tensor(rewards, dtype=torch.float32)
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = grouped.nanmean(dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)
