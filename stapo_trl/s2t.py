"""S2T: silencing spurious tokens (STAPO, arXiv 2602.15620), in pure torch.

A completion token t of response i is *spurious* when all three hold:

1. its response has a positive advantage, ``A_i > 0``;
2. it is improbable under the current policy, ``p_{i,t} < tau_p`` (``tau_p = 0.002`` in the paper);
3. it sits in a confident position, ``H_{i,t} < tau_h``, where ``tau_h`` is the ``q``-quantile (``q = 0.75``) of the
   entropies of the *candidate* tokens (those meeting 1 and 2) of the whole update batch on every process.

The update batch may be split into several micro-batches (gradient accumulation) of different lengths:
:func:`find_spurious_tokens_in_batches` takes them all and applies one ``tau_h`` to every one of them;
:func:`find_spurious_tokens` is the one-batch case. :func:`s2t_statistics` gives the per-batch counts behind the
``stapo/*`` metrics, and :func:`entropy_histogram` / :func:`histogram_quantiles` give entropy percentiles of a
whole logging window from fixed bins that add up over micro-steps and processes (no gather of every entropy).

STAPO drops spurious tokens from the policy-gradient objective and renormalises the token mean over the tokens
that remain (see :func:`stapo_policy_loss`). This module has no dependency on TRL so that the rule can be tested on
its own and reused by other trainers; cross-process reductions come in through a ``gather`` callable.

Shapes: ``B`` completions of ``T`` tokens each. Masks are ``(B, T)``; advantages are ``(B,)`` (one per sequence)
or ``(B, T)``.
"""

import math
from collections.abc import Callable, Sequence
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
    """Apply the S2T rule to one batch (on every process, with ``gather``).

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
    (found,) = find_spurious_tokens_in_batches(
        [per_token_logps],
        [entropies],
        [advantages],
        [loss_mask],
        prob_threshold=prob_threshold,
        entropy_quantile=entropy_quantile,
        entropy_threshold=entropy_threshold,
        gather=gather,
    )
    return found


@torch.no_grad()
def find_spurious_tokens_in_batches(
    per_token_logps: Sequence[torch.Tensor],
    entropies: Sequence[torch.Tensor],
    advantages: Sequence[torch.Tensor],
    loss_masks: Sequence[torch.Tensor],
    prob_threshold: float = 0.002,
    entropy_quantile: float = 0.75,
    entropy_threshold: float | None = None,
    gather: GatherFn | None = None,
) -> list[SpuriousTokens]:
    """Apply the S2T rule to an update batch held as several micro-batches, with one ``tau_h`` for all of them.

    ``tau_h`` is the ``entropy_quantile``-quantile of the candidates of *every* micro-batch on every process, so a
    lone candidate in a micro-batch is silenced whenever the update batch's threshold says so (taken per micro-batch,
    a lone candidate would never be below its own quantile). The rules of :func:`find_spurious_tokens` apply.

    Args:
        per_token_logps, entropies, loss_masks: one ``(B_k, T_k)`` tensor per micro-batch ``k``; shapes may differ
            between micro-batches.
        advantages: one ``(B_k,)`` or ``(B_k, T_k)`` tensor per micro-batch.
        prob_threshold, entropy_quantile, entropy_threshold, gather: as in :func:`find_spurious_tokens`. Every process
            must pass the same number of micro-batches when ``gather`` is given (it is called once).

    Returns:
        One :class:`SpuriousTokens` per micro-batch, all with the same ``entropy_threshold``.
    """
    candidates = [
        find_candidates(logps, batch_advantages, mask, prob_threshold)
        for logps, batch_advantages, mask in zip(per_token_logps, advantages, loss_masks, strict=True)
    ]
    if entropy_threshold is not None:
        device = entropies[0].device if entropies else None
        tau_h = torch.tensor(entropy_threshold, dtype=torch.float32, device=device)
    else:
        candidate_entropies = [
            batch_entropies.detach().float()[batch_candidates]
            for batch_entropies, batch_candidates in zip(entropies, candidates, strict=True)
        ]
        quantile = global_quantiles(torch.cat(candidate_entropies), (entropy_quantile,), gather)
        tau_h = None if quantile is None else quantile[0]
    found = []
    for batch_entropies, batch_candidates in zip(entropies, candidates, strict=True):
        if tau_h is None:
            spurious = torch.zeros_like(batch_candidates)
        elif entropy_threshold is None and entropy_quantile >= 1.0:
            spurious = batch_candidates
        else:
            spurious = batch_candidates & (batch_entropies.detach().float() < tau_h)
        found.append(SpuriousTokens(spurious=spurious, candidates=batch_candidates, entropy_threshold=tau_h))
    return found


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


S2T_STATISTICS = (
    "loss_tokens",
    "scored_tokens",
    "kept_tokens",
    "candidate_tokens",
    "silenced_tokens",
    "nonfinite_tokens",
    "silenced_entropy_sum",
    "silenced_prob_sum",
    "scored_entropy_sum",
)
"""The names of the entries of :func:`s2t_statistics`, in order."""


@torch.no_grad()
def s2t_statistics(
    loss_mask: torch.Tensor,
    scored: torch.Tensor,
    keep: torch.Tensor,
    candidates: torch.Tensor,
    silenced: torch.Tensor,
    nonfinite: torch.Tensor,
    per_token_logps: torch.Tensor,
    entropies: torch.Tensor,
) -> torch.Tensor:
    """The counts and sums of one batch behind the ``stapo/*`` metrics and the renormalised denominator.

    Sums over batches and processes stay meaningful (they are counts and sums, never ratios), so a logging window is
    summarised by adding these vectors and taking ratios once, at the end.

    Args:
        loss_mask: ``(B, T)`` the tokens of the loss before S2T.
        scored: ``(B, T)`` the loss tokens with finite inputs (the ones S2T looks at).
        keep: ``(B, T)`` the tokens that stay in the loss.
        candidates, silenced, nonfinite: ``(B, T)`` bool masks (see :func:`find_spurious_tokens`, :func:`nonfinite_tokens`).
        per_token_logps, entropies: ``(B, T)`` the values the mask was computed from.

    Returns:
        ``(len(S2T_STATISTICS),)`` float64 tensor, in the order of :data:`S2T_STATISTICS` (float64 keeps token counts
        exact beyond 2**24).
    """
    entropies = entropies.detach().double()
    return torch.stack(
        [
            loss_mask.sum().double(),
            scored.sum().double(),
            keep.sum().double(),
            candidates.sum().double(),
            silenced.sum().double(),
            nonfinite.sum().double(),
            entropies[silenced].sum(),
            per_token_logps.detach().double()[silenced].exp().sum(),
            entropies[scored].sum(),
        ]
    )


# Fixed bins of the entropy histogram: bin 0 holds [0, ENTROPY_HISTOGRAM_MIN), then log-spaced bins up to
# ENTROPY_HISTOGRAM_MAX nats (ln of a 485M-token vocabulary, above any real model), the last bin also holding
# anything larger. 1024 log-spaced bins over 7.3 decades are 1.6% wide each, so a percentile read off the histogram
# is within 1.6% of the exact one.
ENTROPY_HISTOGRAM_MIN = 1e-6
ENTROPY_HISTOGRAM_MAX = 20.0
ENTROPY_HISTOGRAM_LOG_BINS = 1024
_LOG_MIN = math.log(ENTROPY_HISTOGRAM_MIN)
_LOG_BIN_WIDTH = (math.log(ENTROPY_HISTOGRAM_MAX) - _LOG_MIN) / ENTROPY_HISTOGRAM_LOG_BINS


@torch.no_grad()
def entropy_histogram(entropies: torch.Tensor) -> torch.Tensor:
    """Counts of ``entropies`` in the fixed bins of the entropy metric.

    Args:
        entropies: ``(N,)`` entropies in nats (any shape is flattened).

    Returns:
        ``(ENTROPY_HISTOGRAM_LOG_BINS + 1,)`` float64 counts; histograms of different batches and processes add up.
    """
    values = entropies.detach().reshape(-1).double()
    log_bins = torch.floor((values.clamp(min=ENTROPY_HISTOGRAM_MIN).log() - _LOG_MIN) / _LOG_BIN_WIDTH)
    index = torch.where(values < ENTROPY_HISTOGRAM_MIN, 0, 1 + log_bins.clamp(0, ENTROPY_HISTOGRAM_LOG_BINS - 1).long())
    return torch.bincount(index, minlength=ENTROPY_HISTOGRAM_LOG_BINS + 1).double()


def histogram_quantiles(counts: torch.Tensor, quantiles: Sequence[float]) -> list[float] | None:
    """Quantiles of the values behind an :func:`entropy_histogram`, interpolated inside their bin.

    The ``q``-quantile is the value of rank ``q * N`` (``N`` values in all): inside the first bin linearly from 0,
    inside a log-spaced bin geometrically between its edges.

    Args:
        counts: ``(ENTROPY_HISTOGRAM_LOG_BINS + 1,)`` counts, summed over any number of histograms.
        quantiles: each in ``[0, 1]``.

    Returns:
        One value per quantile, or ``None`` when the histogram is empty.
    """
    counts = counts.double().cpu()
    total = counts.sum().item()
    if total <= 0:
        return None
    cumulative = torch.cumsum(counts, 0)
    values = []
    for q in quantiles:
        rank = min(max(q, 0.0), 1.0) * total
        index = min(int(torch.searchsorted(cumulative, torch.tensor(rank, dtype=torch.float64)).item()), len(counts) - 1)
        while counts[index] == 0:  # rank 0 falls before the first non-empty bin
            index += 1
        below = cumulative[index].item() - counts[index].item()
        fraction = min(max((rank - below) / counts[index].item(), 0.0), 1.0)
        if index == 0:
            values.append(fraction * ENTROPY_HISTOGRAM_MIN)
        else:
            values.append(math.exp(_LOG_MIN + (index - 1 + fraction) * _LOG_BIN_WIDTH))
    return values


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
