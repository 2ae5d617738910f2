"""The S2T rule and its quantile, on hand-computed cases and as properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stapo_trl.s2t import (
    ENTROPY_HISTOGRAM_LOG_BINS,
    S2T_STATISTICS,
    entropy_histogram,
    find_candidates,
    find_spurious_tokens,
    find_spurious_tokens_in_batches,
    global_quantiles,
    histogram_quantiles,
    linear_quantile,
    nonfinite_tokens,
    s2t_statistics,
    stapo_policy_loss,
)

LOW_P = math.log(0.001)  # below tau_p = 0.002
HIGH_P = math.log(0.5)


def one_token(logp, entropy, advantage, **kwargs):
    """A batch of two positive tokens: the token under test and a high-entropy candidate setting tau_h."""
    logps = torch.tensor([[logp, LOW_P]])
    entropies = torch.tensor([[entropy, 5.0]])
    return find_spurious_tokens(logps, entropies, torch.tensor([advantage]), torch.ones(1, 2), **kwargs)


class TestHandComputedCases:
    def test_all_three_conditions_silence_the_token(self):
        # candidates' entropies {0.1, 5.0}: the 0.75-quantile is 0.1 + 0.75 * 4.9 = 3.775
        result = one_token(LOW_P, 0.1, 1.0)
        assert result.spurious.tolist() == [[True, False]]
        assert result.entropy_threshold.item() == pytest.approx(3.775)

    def test_negative_advantage_is_never_silenced(self):
        result = one_token(LOW_P, 0.1, -1.0)
        assert not result.spurious.any()
        assert not result.candidates.any()

    def test_zero_advantage_is_never_silenced(self):
        assert not one_token(LOW_P, 0.1, 0.0).spurious.any()

    def test_probable_token_is_never_silenced(self):
        result = one_token(HIGH_P, 0.1, 1.0)
        assert result.candidates.tolist() == [[False, True]]
        assert not result.spurious.any()

    def test_uncertain_token_is_kept(self):
        # a high-entropy candidate above tau_h: 3 candidates {0.1, 4.0, 5.0} -> tau_h = 4.0 + 0.5 * 1.0 = 4.5
        logps = torch.tensor([[LOW_P, LOW_P, LOW_P]])
        entropies = torch.tensor([[0.1, 4.0, 5.0]])
        result = find_spurious_tokens(logps, entropies, torch.tensor([1.0]), torch.ones(1, 3))
        assert result.entropy_threshold.item() == pytest.approx(4.5)
        assert result.spurious.tolist() == [[True, True, False]]

    def test_probability_comparison_is_strict(self):
        logps = torch.tensor([[math.log(0.25)]])
        assert not find_candidates(logps, torch.tensor([1.0]), torch.ones(1, 1), prob_threshold=0.25).any()
        assert find_candidates(logps, torch.tensor([1.0]), torch.ones(1, 1), prob_threshold=0.2500001).all()

    def test_entropy_comparison_is_strict(self):
        logps = torch.full((1, 2), LOW_P)
        entropies = torch.tensor([[1.0, 0.5]])
        result = find_spurious_tokens(logps, entropies, torch.tensor([1.0]), torch.ones(1, 2), entropy_threshold=1.0)
        assert result.spurious.tolist() == [[False, True]]

    def test_padding_is_never_silenced(self):
        logps = torch.full((1, 3), LOW_P)
        entropies = torch.tensor([[0.1, 0.2, 0.3]])
        mask = torch.tensor([[1, 1, 0]])
        result = find_spurious_tokens(logps, entropies, torch.tensor([1.0]), mask, entropy_quantile=1.0)
        assert result.spurious.tolist() == [[True, True, False]]

    def test_per_token_advantages(self):
        logps = torch.full((1, 2), LOW_P)
        advantages = torch.tensor([[1.0, -1.0]])
        result = find_spurious_tokens(logps, torch.zeros(1, 2), advantages, torch.ones(1, 2), entropy_quantile=1.0)
        assert result.spurious.tolist() == [[True, False]]

    def test_quantile_edges(self):
        logps = torch.full((1, 4), LOW_P)
        entropies = torch.tensor([[0.5, 1.0, 1.5, 2.0]])
        args = (logps, entropies, torch.tensor([1.0]), torch.ones(1, 4))
        assert not find_spurious_tokens(*args, entropy_quantile=0.0).spurious.any()
        assert find_spurious_tokens(*args, entropy_quantile=1.0).spurious.all()
        # q = 0.5 over {0.5, 1.0, 1.5, 2.0} is 1.25
        assert find_spurious_tokens(*args, entropy_quantile=0.5).spurious.tolist() == [[True, True, False, False]]

    def test_absolute_threshold_replaces_quantile(self):
        logps = torch.full((1, 3), LOW_P)
        entropies = torch.tensor([[0.5, 1.0, 1.5]])
        result = find_spurious_tokens(
            logps, entropies, torch.tensor([1.0]), torch.ones(1, 3), entropy_quantile=0.0, entropy_threshold=1.2
        )
        assert result.spurious.tolist() == [[True, True, False]]
        assert result.entropy_threshold.item() == pytest.approx(1.2)

    def test_no_candidates_masks_nothing_without_nan(self):
        logps = torch.full((2, 3), HIGH_P)
        result = find_spurious_tokens(logps, torch.rand(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
        assert not result.spurious.any()
        assert result.entropy_threshold is None

    def test_mask_carries_no_gradient(self):
        logps = torch.full((1, 2), LOW_P, requires_grad=True)
        entropies = torch.tensor([[0.1, 5.0]], requires_grad=True)
        result = find_spurious_tokens(logps, entropies, torch.tensor([1.0]), torch.ones(1, 2))
        assert not result.spurious.requires_grad
        assert result.spurious.dtype == torch.bool


class TestQuantile:
    @pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    @pytest.mark.parametrize("n", [1, 2, 7, 1000])
    def test_matches_torch_quantile(self, q, n):
        values = torch.randn(n, generator=torch.Generator().manual_seed(n))
        assert linear_quantile(values, q).item() == pytest.approx(torch.quantile(values, q).item(), abs=1e-6)

    def test_beyond_torch_quantile_limit(self):
        n = 2**24 + 1000  # torch.quantile refuses more than 2**24 elements
        values = torch.arange(n, dtype=torch.float32).flip(0)
        with pytest.raises(RuntimeError):
            torch.quantile(values, 0.75)
        # sorted values are 0..n-1, so the 0.75-quantile sits at position 0.75 * (n - 1)
        assert linear_quantile(values, 0.75).item() == pytest.approx(0.75 * (n - 1), rel=1e-7)

    def test_more_than_16_7_million_candidates(self):
        n = 2**24 + 10
        logps = torch.full((1, n), LOW_P)
        entropies = torch.linspace(0.0, 1.0, n).unsqueeze(0)
        result = find_spurious_tokens(logps, entropies, torch.tensor([1.0]), torch.ones(1, n, dtype=torch.bool))
        assert result.entropy_threshold.item() == pytest.approx(0.75, abs=1e-6)
        assert result.spurious.sum().item() == pytest.approx(0.75 * n, rel=1e-5)

    def test_split_over_processes_equals_one_process(self):
        values = torch.rand(101, generator=torch.Generator().manual_seed(3))
        parts = [values[:10], values[10:10], values[10:77], values[77:]]  # uneven, one process has none

        def gather(local):
            return torch.cat(parts)

        single = global_quantiles(values, (0.1, 0.5, 0.75), None)
        split = global_quantiles(parts[1], (0.1, 0.5, 0.75), gather)
        assert torch.equal(single, split)

    def test_empty_everywhere_is_none(self):
        assert global_quantiles(torch.empty(0), (0.5,), None) is None


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 5),
    length=st.integers(1, 7),
    prob_threshold=st.floats(0.001, 1.0),
    quantile=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_invariants(batch, length, prob_threshold, quantile, seed):
    generator = torch.Generator().manual_seed(seed)
    logps = -8.0 * torch.rand(batch, length, generator=generator)
    entropies = 3.0 * torch.rand(batch, length, generator=generator)
    advantages = torch.randn(batch, generator=generator)
    mask = torch.rand(batch, length, generator=generator) > 0.3
    result = find_spurious_tokens(logps, entropies, advantages, mask, prob_threshold, quantile)
    spurious = result.spurious
    assert spurious.dtype == torch.bool and spurious.shape == (batch, length)
    assert not (spurious & ~mask).any(), "spurious tokens must be loss tokens"
    assert not (spurious & ~result.candidates).any(), "spurious tokens must be candidates"
    assert not spurious[advantages <= 0].any(), "only positive-advantage tokens are silenced"
    assert (logps.exp()[spurious] < prob_threshold).all()
    if result.entropy_threshold is not None and quantile < 1.0:
        assert (entropies[spurious] < result.entropy_threshold).all()
        kept_candidates = result.candidates & ~spurious
        assert (entropies[kept_candidates] >= result.entropy_threshold).all()
    if quantile == 1.0:
        assert torch.equal(spurious, result.candidates)
    # never more than a q share of the candidates (ties aside), so exploration is kept
    if result.candidates.any() and quantile < 1.0:
        assert spurious.sum() <= math.ceil(quantile * result.candidates.sum().item()) + 1


def test_nonfinite_tokens():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    logps = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, float("inf")]])
    advantages = torch.tensor([0.0, float("inf")])
    bad = nonfinite_tokens(mask, logps, None, advantages)
    assert bad.tolist() == [[False, True, False], [True, True, False]]


class TestPolicyLoss:
    def test_hand_computed(self):
        logps = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
        old = torch.log(torch.tensor([[0.25, 0.5], [0.5, 1.0]]))
        advantages = torch.tensor([1.0, -1.0])
        keep = torch.tensor([[1, 1], [1, 0]])
        # ratios: [[2, 1], [1, 0.5]]; token losses -min(rA, clip(r)A): [[-1.28, -1], [1, *]]; kept mean = -1.28/3
        loss = stapo_policy_loss(logps, old, advantages, keep, 0.2, 0.28)
        assert loss.item() == pytest.approx((-1.28 - 1.0 + 1.0) / 3)

    def test_all_silenced_is_zero_with_zero_gradient(self):
        logps = torch.zeros(2, 3, requires_grad=True)
        loss = stapo_policy_loss(logps, torch.zeros(2, 3), torch.tensor([1.0, 1.0]), torch.zeros(2, 3))
        loss.backward()
        assert loss.item() == 0.0
        assert torch.equal(logps.grad, torch.zeros(2, 3))


class TestSeveralMicroBatches:
    def test_one_threshold_over_micro_batches_of_different_lengths(self):
        # micro-batch 1: a lone candidate (entropy 0.2); micro-batch 2: candidates {1, 2, 3, 4} and a longer length
        lone = (torch.tensor([[LOW_P, HIGH_P]]), torch.tensor([[0.2, 0.0]]), torch.tensor([1.0]), torch.ones(1, 2))
        crowded = (
            torch.tensor([[LOW_P, LOW_P, LOW_P, LOW_P, HIGH_P]]),
            torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0]]),
            torch.tensor([1.0]),
            torch.ones(1, 5),
        )
        found = find_spurious_tokens_in_batches(*zip(lone, crowded, strict=True))
        # candidates' entropies {0.2, 1, 2, 3, 4}: the 0.75-quantile is 3
        assert [f.entropy_threshold.item() for f in found] == [pytest.approx(3.0)] * 2
        assert found[0].spurious.tolist() == [[True, False]]
        assert found[1].spurious.tolist() == [[True, True, False, False, False]]
        assert not find_spurious_tokens(*lone).spurious.any()  # alone, it is its own 0.75-quantile

    def test_one_micro_batch_equals_find_spurious_tokens(self):
        generator = torch.Generator().manual_seed(0)
        logps, entropies = -6 * torch.rand(3, 5, generator=generator), torch.rand(3, 5, generator=generator)
        advantages, mask = torch.tensor([1.0, -1.0, 0.5]), torch.ones(3, 5)
        (together,) = find_spurious_tokens_in_batches([logps], [entropies], [advantages], [mask], prob_threshold=0.05)
        alone = find_spurious_tokens(logps, entropies, advantages, mask, prob_threshold=0.05)
        assert torch.equal(together.spurious, alone.spurious)
        assert torch.equal(together.entropy_threshold, alone.entropy_threshold)


def test_statistics_by_hand():
    loss_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    nonfinite = torch.tensor([[False, False, True], [False, False, False]])
    scored = loss_mask.bool() & ~nonfinite
    candidates = torch.tensor([[True, True, False], [False, True, False]])
    silenced = torch.tensor([[True, False, False], [False, True, False]])
    keep = scored & ~silenced
    logps = torch.log(torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    entropies = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    values = dict(zip(S2T_STATISTICS, s2t_statistics(loss_mask, scored, keep, candidates, silenced, nonfinite, logps,
                                                     entropies).tolist(), strict=True))  # fmt: skip
    assert values == {
        "loss_tokens": 5.0, "scored_tokens": 4.0, "kept_tokens": 2.0, "candidate_tokens": 3.0, "silenced_tokens": 2.0,
        "nonfinite_tokens": 1.0, "silenced_entropy_sum": 6.0, "silenced_prob_sum": pytest.approx(0.6),
        "scored_entropy_sum": 12.0,
    }  # fmt: skip


class TestEntropyHistogram:
    def test_counts_add_up_and_zero_lands_in_the_first_bin(self):
        counts = entropy_histogram(torch.tensor([0.0, 1e-9, 0.5, 3.0, 50.0]))
        assert counts.shape == (ENTROPY_HISTOGRAM_LOG_BINS + 1,)
        assert counts.sum().item() == 5 and counts[0].item() == 2 and counts[-1].item() == 1  # 50 nats: the last bin
        assert torch.equal(entropy_histogram(torch.tensor([0.5, 3.0])) + entropy_histogram(torch.tensor([1.0])),
                           entropy_histogram(torch.tensor([0.5, 3.0, 1.0])))  # fmt: skip

    @pytest.mark.parametrize("seed", range(3))
    def test_percentiles_within_a_bin_of_the_exact_ones(self, seed):
        generator = torch.Generator().manual_seed(seed)
        values = torch.empty(20_000).exponential_(2.0, generator=generator) ** 2  # many near zero, a long tail
        estimated = histogram_quantiles(entropy_histogram(values), [0.1, 0.5, 0.9])
        exact = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9])).tolist()
        for estimate, truth in zip(estimated, exact, strict=True):
            assert estimate == pytest.approx(truth, rel=0.017)

    def test_empty_is_none(self):
        assert histogram_quantiles(entropy_histogram(torch.empty(0)), [0.5]) is None
