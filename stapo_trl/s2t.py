"""S2T: silencing spurious tokens (STAPO, arXiv 2602.15620), in pure torch.

A completion token t of response i is *spurious* when all three hold:

1. its response has a positive advantage, ``A_i > 0``;
2. it is improbable under the current policy, ``p_{i,t} < tau_p`` (``tau_p = 0.002`` in the paper);
3. it sits in a confident position, ``H_{i,t} < tau_h``, where ``tau_h`` is the ``q``-quantile (``q = 0.75``) of the
   entropies of the *candidate* tokens (those meeting 1 and 2) of the whole update batch on every process.

STAPO drops spurious tokens from the policy-gradient objective and renormalises the token mean over the tokens
that remain (see :func:`stapo_policy_loss`). This module has no dependency on TRL so that the rule can be tested on
its own and reused by other trainers; cross-process reductions come in through a ``gather`` callable.

Shapes: ``B`` completions of ``T`` tokens each. Masks are ``(B, T)``; advantages are ``(B,)`` (one per sequence)
or ``(B, T)``.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

GatherFn = Callable[[torch.Tensor], torch.Tensor]
"""Concatenates a 1-D tensor over all processes, ``(N_local,) -> (N_global,)``, in a fixed process order."""


@dataclass
class SpuriousTokens:
    """The result of :func:`find_spurious_tokens`.

    Attributes:
        spurious: ``(B, T)`` bool, the tokens to silence; always a subset of ``candidates``.
        candidates: ``(B, T)`` bool, loss tokens with a positive advantage and a probability below ``tau_p``.
        entropy_threshold: ``()`` float tensor, the ``tau_h`` that was applied, or ``None`` when no process had a
            candidate (then nothing is silenced).
    """

    spurious: torch.Tensor
    candidates: torch.Tensor
    entropy_threshold: torch.Tensor | None


def per_token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast sequence advantages ``(B,)`` (or ``(B, 1)``, ``(B, T)``) to the ``(B, T)`` shape of ``like``."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    return advantages.expand_as(like)


@torch.no_grad()
def find_candidates(
    per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    prob_threshold: float,
) -> torch.Tensor:
    """Loss tokens that meet conditions 1 and 2 of the S2T rule.

    Args:
        per_token_logps: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        advantages: ``(B,)`` or ``(B, T)`` advantages.
        loss_mask: ``(B, T)`` 1 (or True) for the tokens that enter the loss.
        prob_threshold: ``tau_p``; a token qualifies when ``exp(logp) < tau_p`` (strict).

    Returns:
        ``(B, T)`` bool mask of candidate tokens.
    """
    positive = per_token_advantages(advantages, per_token_logps) > 0
    improbable = per_token_logps.detach().exp() < prob_threshold
    return positive & improbable & loss_mask.bool()


def linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q``-quantile of a 1-D tensor with linear interpolation, as ``torch.quantile`` computes it.

    ``torch.quantile`` refuses inputs of more than 2**24 elements; this sorts, which has no size limit and stays
    O(N log N) on any input (``torch.kthvalue`` degrades badly on already sorted values).

    Args:
        values: ``(N,)`` with ``N >= 1``.
        q: the quantile, in ``[0, 1]``.

    Returns:
        ``()`` tensor in the dtype of ``values``.
    """
    if values.numel() == 0:
        raise ValueError("linear_quantile needs at least one value.")
    return _quantile_of_sorted(torch.sort(values).values, q)


def _quantile_of_sorted(ordered: torch.Tensor, q: float) -> torch.Tensor:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}.")
    position = q * (ordered.numel() - 1)
    lower_index = int(position)
    fraction = position - lower_index
    lower = ordered[lower_index]
    if fraction == 0.0:
        return lower
    upper = ordered[lower_index + 1]
    return torch.lerp(lower, upper, torch.tensor(fraction, dtype=ordered.dtype, device=ordered.device))


def global_quantiles(local_values: torch.Tensor, quantiles: tuple[float, ...], gather: GatherFn | None = None):
    """Quantiles of values spread over processes, identical on 1 process and on N holding the same values.

    Args:
        local_values: ``(N_local,)`` this process's values (may be empty).
        quantiles: the quantiles to compute, each in ``[0, 1]``.
        gather: concatenates the values of all processes; ``None`` on a single process.

    Returns:
        ``(len(quantiles),)`` float32 tensor, or ``None`` when no process holds a value. Every process returns the
        same result, and every process must call this (it is a collective when ``gather`` is given).
    """
    values = local_values.detach().float().reshape(-1)
    if gather is not None:
        values = gather(values)
    if values.numel() == 0:
        return None
    ordered = torch.sort(values).values
    return torch.stack([_quantile_of_sorted(ordered, q) for q in quantiles])


@torch.no_grad()
def find_spurious_tokens(
    per_token_logps: torch.Tensor,
    entropies: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    prob_threshold: float = 0.002,
    entropy_quantile: float = 0.75,
    entropy_threshold: float | None = None,
    gather: GatherFn | None = None,
) -> SpuriousTokens:
    """Apply the S2T rule to a micro-batch.

    Everything is computed without gradient from detached inputs. With ``entropy_threshold`` set, ``tau_h`` is that
    absolute value; otherwise it is the ``entropy_quantile``-quantile of the candidates' entropies over all
    processes. The comparison ``H < tau_h`` is strict, so ``entropy_quantile = 0`` silences nothing; since the
    1-quantile is the largest entropy itself, ``entropy_quantile = 1`` is taken to mean "silence every candidate".

    Args:
        per_token_logps: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        entropies: ``(B, T)`` entropies (nats) of the current policy's next-token distributions.
        advantages: ``(B,)`` or ``(B, T)`` advantages.
        loss_mask: ``(B, T)`` the tokens that enter the loss; spurious tokens are always a subset of it.
        prob_threshold: ``tau_p``.
        entropy_quantile: ``q``.
        entropy_threshold: absolute ``tau_h``; replaces ``entropy_quantile`` when not ``None``.
        gather: concatenates 1-D tensors over processes (a collective: every process must call this function).

    Returns:
        A :class:`SpuriousTokens`.
    """
    candidates = find_candidates(per_token_logps, advantages, loss_mask, prob_threshold)
    candidate_entropies = entropies.detach()[candidates]
    if entropy_threshold is not None:
        tau_h = torch.tensor(entropy_threshold, dtype=torch.float32, device=entropies.device)
        spurious = candidates & (entropies.detach() < tau_h)
        return SpuriousTokens(spurious=spurious, candidates=candidates, entropy_threshold=tau_h)

    quantile = global_quantiles(candidate_entropies, (entropy_quantile,), gather)
    if quantile is None:
        return SpuriousTokens(spurious=torch.zeros_like(candidates), candidates=candidates, entropy_threshold=None)
    tau_h = quantile[0]
    if entropy_quantile >= 1.0:
        spurious = candidates
    else:
        spurious = candidates & (entropies.detach().float() < tau_h)
    return SpuriousTokens(spurious=spurious, candidates=candidates, entropy_threshold=tau_h)


def nonfinite_tokens(loss_mask: torch.Tensor, *per_token_values: torch.Tensor | None) -> torch.Tensor:
    """Loss tokens at which any of the given tensors is NaN or infinite.

    Args:
        loss_mask: ``(B, T)``.
        per_token_values: tensors broadcastable to ``(B, T)`` (``(B,)`` is read as one value per sequence);
            ``None`` entries are skipped.

    Returns:
        ``(B, T)`` bool mask, a subset of ``loss_mask``.
    """
    bad = torch.zeros_like(loss_mask, dtype=torch.bool)
    for values in per_token_values:
        if values is None:
            continue
        if values.dim() == 1:
            values = values.unsqueeze(1)
        bad |= ~torch.isfinite(values.detach())
    return bad & loss_mask.bool()


def stapo_policy_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    keep_mask: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    num_kept_tokens: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """The STAPO objective (to minimise) over the kept tokens of a batch.

    ``L = -(1 / sum M) * sum_{i,t} M_{i,t} * min(r_{i,t} A_i, clip(r_{i,t}, 1 - eps_low, 1 + eps_high) A_i)``
    with ``r = exp(logp - old_logp)`` and ``M`` the loss mask with the spurious tokens removed.

    Args:
        per_token_logps: ``(B, T)`` current log-probabilities (with gradient).
        old_per_token_logps: ``(B, T)`` log-probabilities of the policy that sampled the batch.
        advantages: ``(B,)`` or ``(B, T)``.
        keep_mask: ``(B, T)`` ``M``.
        epsilon_low, epsilon_high: the clip range.
        num_kept_tokens: the denominator; defaults to ``keep_mask.sum()`` (pass the global count when the batch
            is split over processes).

    Returns:
        ``()`` loss; ``0`` (with zero gradient) when no token is kept.
    """
    advantages = per_token_advantages(advantages, per_token_logps)
    ratio = torch.exp(per_token_logps - old_per_token_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(ratio * advantages, clipped * advantages)
    keep = keep_mask.to(per_token_loss.dtype)
    if num_kept_tokens is None:
        num_kept_tokens = keep.sum()
    return (per_token_loss * keep).sum() / torch.as_tensor(num_kept_tokens, dtype=per_token_loss.dtype).clamp(min=1.0)
