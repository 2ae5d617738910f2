"""Per-token probability and entropy (TRL's fused LM head, the pass the trainer uses), the gradient-norm proxy, and
everything for one group: rewards, advantages, statistics and the S2T mask (`stapo_trl.s2t.find_spurious_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..s2t import SpuriousTokens, find_spurious_tokens
from .rollout import Rollout, group_advantages


@dataclass
class TokenStats:
    """Per-completion-token statistics of the current policy, `(B, T)` each (zero outside the completion mask).

    `logps`: log-probability of the sampled token; `entropies`: entropy (nats) of the next-token distribution;
    `log_sum_sq_probs`: `log(sum_v p_v^2)` of that distribution (for the gradient-norm proxy).
    """

    logps: torch.Tensor
    entropies: torch.Tensor
    log_sum_sq_probs: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return self.logps.exp()


@torch.no_grad()
def per_token_logps_and_entropies(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> TokenStats:
    """Log-probabilities, entropies and `log(sum p^2)` of the completion tokens, as `GRPOTrainer` computes them.

    The same call as TRL 1.16's `_get_per_token_logps_and_entropies`: TRL's fused LM head
    (`trl.trainer.utils.add_fused_lm_head`) at `temperature`, labels = the completion tokens, so no
    `(B, T, vocab)` logits are materialised. The head is attached for this call only and the model's own `forward`
    is restored afterwards (a model already patched by a trainer keeps its patch).
    """
    from trl.trainer.utils import add_fused_lm_head

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    previous = base.__dict__.get("forward")
    add_fused_lm_head(base, temperature=temperature, outputs=("log_probs", "entropy", "log_sum_sq_probs"))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits_to_keep = completion_ids.size(1)
    parts: dict[str, list[torch.Tensor]] = {"log_probs": [], "entropy": [], "log_sum_sq_probs": []}
    try:
        for start in range(0, prompt_ids.size(0), batch_size):
            input_ids = torch.cat([prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]], 1)
            attention_mask = torch.cat(
                [prompt_mask[start : start + batch_size], completion_mask[start : start + batch_size]], 1
            )
            labels = input_ids.masked_fill(attention_mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            outputs = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                labels=labels.to(device),
                fused_lm_head=True,
            )
            for name in parts:
                parts[name].append(getattr(outputs, name)[:, -logits_to_keep:].float().cpu())
    finally:
        model.train(was_training)
        if previous is None:
            del base.forward
        else:
            base.forward = previous
    mask = completion_mask.bool()
    stats = {name: torch.cat(values).masked_fill(~mask, 0.0) for name, values in parts.items()}
    return TokenStats(logps=stats["log_probs"], entropies=stats["entropy"], log_sum_sq_probs=stats["log_sum_sq_probs"])


def softmax_gradient_norm(logps: torch.Tensor, log_sum_sq_probs: torch.Tensor) -> torch.Tensor:
    """`|| d log p_y / d z ||_2 = || onehot(y) - softmax(z) ||_2 = sqrt((1 - p_y)^2 + sum_{j != y} p_j^2)`.

    Expanded, `(1 - p_y)^2 + sum_{j != y} p_j^2 = 1 - 2 p_y + sum_j p_j^2`, so the norm needs only `p_y` and
    `sum_j p_j^2` (which the fused LM head returns). It lies in `[0, sqrt(2))`: 0 for a certain, sampled token, and
    close to `sqrt(2)` for an improbable token in a confident position (all the mass on another token).
    """
    p = logps.exp()
    return (1.0 - 2.0 * p + log_sum_sq_probs.exp()).clamp(min=0.0).sqrt()


def gradient_norm_proxy(stats: TokenStats, advantages: torch.Tensor) -> torch.Tensor:
    """Per-token policy-gradient norm proxy `|A_i| * || onehot(y) - softmax(z) ||` (w.r.t. the logits `z`), `(B, T)`.

    On-policy (ratio 1), the gradient of token t's term `A_i * log p_y` w.r.t. its logits is `A_i * (onehot(y) - p)`.
    """
    advantages = torch.as_tensor(advantages, dtype=torch.float32)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    return advantages.abs() * softmax_gradient_norm(stats.logps, stats.log_sum_sq_probs)


@dataclass
class TokenAnalysis:
    """A scored rollout: rewards, advantages, per-token statistics and the S2T result at `tau_p`, `q`."""

    rollout: Rollout
    rewards: torch.Tensor
    advantages: torch.Tensor
    stats: TokenStats
    tau_p: float
    q: float
    found: SpuriousTokens

    @property
    def mask(self) -> torch.Tensor:
        return self.rollout.completion_mask.bool()

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def num_silenced(self) -> int:
        return int(self.found.spurious.sum())

    @property
    def num_candidates(self) -> int:
        return int(self.found.candidates.sum())

    @property
    def tau_h(self) -> float | None:
        return None if self.found.entropy_threshold is None else float(self.found.entropy_threshold)

    def with_thresholds(self, tau_p: float, q: float) -> TokenAnalysis:
        """The same tokens under other thresholds (the mask is recomputed with `find_spurious_tokens`)."""
        found = find_spurious_tokens(
            self.stats.logps, self.stats.entropies, self.advantages, self.mask, prob_threshold=tau_p, entropy_quantile=q
        )
        return TokenAnalysis(self.rollout, self.rewards, self.advantages, self.stats, tau_p, q, found)

    def summary(self) -> dict[str, Any]:
        return {
            "completions": len(self.rollout.completions),
            "tokens": self.num_tokens,
            "positive_advantage_tokens": int((self.mask & (self.advantages.unsqueeze(1) > 0)).sum()),
            "candidates": self.num_candidates,
            "silenced": self.num_silenced,
            "silenced_fraction": self.num_silenced / max(self.num_tokens, 1),
            "tau_p": self.tau_p,
            "q": self.q,
            "tau_h": self.tau_h,
            "mean_reward": float(self.rewards.mean()),
        }


def analyse_rollout(
    model,
    rollout: Rollout,
    reward_fn=None,
    tau_p: float = 0.002,
    q: float = 0.75,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> TokenAnalysis:
    """Score `rollout` with `reward_fn` (default: the paper's +1/-1 `stapo_trl.rewards.boxed_reward`), compute GRPO
    advantages, per-token statistics and the S2T mask (`find_spurious_tokens`, the trainer's own function)."""
    if reward_fn is None:
        from ..rewards import boxed_reward as reward_fn
    rewards = torch.tensor(reward_fn(rollout.completions, answer=rollout.answers), dtype=torch.float32)
    advantages = group_advantages(rewards, rollout.num_generations)
    stats = per_token_logps_and_entropies(
        model,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
        temperature=temperature,
        batch_size=batch_size,
    )
    found = find_spurious_tokens(
        stats.logps, stats.entropies, advantages, rollout.completion_mask, prob_threshold=tau_p, entropy_quantile=q
    )
    return TokenAnalysis(rollout, rewards, advantages, stats, tau_p, q, found)


def silenced_counts(analysis: TokenAnalysis, tau_ps: Sequence[float], qs: Sequence[float]) -> dict[float, list[int]]:
    """`{q: [silenced tokens at each tau_p]}`, for a sweep plot."""
    return {q: [analysis.with_thresholds(tau_p, q).num_silenced for tau_p in tau_ps] for q in qs}
