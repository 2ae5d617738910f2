"""The S2T operation alone at realistic sizes, next to the fused log-prob/entropy pass it rides on.

Measured, each as the median of `--repeats` runs (interleaved), with torch's allocator peak:
- `find_spurious_tokens`: candidates (A > 0, p < tau_p), the global 0.75-quantile of the candidates' entropies, the
  spurious mask;
- the trainer's bookkeeping around it (`STAPOTrainer._decide`): the non-finite check, `s2t_statistics` (the counts
  that feed the denominator and the `stapo/*` metrics) and the entropy histogram the percentile metrics are read from;
- the entropy-percentile metric before and after it moved to a histogram: a sort of every scored token's entropy at
  every micro-step (the earlier code, which also gathered them from every process) against a fixed-bin histogram per
  micro-step plus one read-out per log;
- `stapo_policy_loss` forward + backward (renormalised over the kept tokens) next to the same clipped loss without
  a mask (what the parent trainer computes anyway), so that the renormalisation's own cost is the difference;
- the fused log-prob + entropy pass of a Qwen3-1.7B-sized LM head (hidden 2048, vocab 151936) through TRL's
  `ChunkedLogProbFunction` (the kernel `add_fused_lm_head` installs), forward and forward + backward. On CPU it is
  measured on `--lm-head-tokens` tokens and scaled linearly to the batch (the pass is linear in the token count: the
  kernel walks fixed 4096 x 32768 tiles); the backbone's cost is not included, so the comparison favours the head.

Cases (inputs are synthetic: log-probabilities and entropies drawn so that a chosen fraction of the positive-advantage
tokens are improbable; the sort behind the quantile does not depend on the values):
- `paper_batch`: 16 sequences x 16384 tokens (262,144 tokens), half the sequences positive, 1% of their tokens below
  tau_p (about 1,300 candidates) and a worst case where every positive token is a candidate (131,072);
- `over_2pow24`: 17,039,360 candidates (1040 x 16384, all positive and improbable), more than the 2**24 = 16,777,216
  elements `torch.quantile` accepts, the size of a gathered candidate set on many GPUs;
- `scope_decisions`: how often `spurious_stats_scope="micro_batch"` decides differently from `"step"` on an optimizer
  step of 512 completions split into 64 micro-steps of 8 completions (the paper's recipe on 8 GPUs, micro-batch 1),
  at several candidate rates per micro-step. The decision depends only on the ranks of the candidates' entropies, so
  random entropies suffice.

Sizes fit in 24 GiB of RAM: the largest case holds about 17M x (4 fp32 + 3 bool) = 0.3 GB of inputs and masks plus the
sort's copy; the LM-head pass holds a 151936 x 2048 fp32 weight and its fp32 gradient (2 x 1.2 GB) and 4096 x 32768
tiles.

    python benchmarks/s2t_op.py          # about 5-7 minutes on 2 busy CPU cores
    python benchmarks/s2t_op.py --quick  # smaller, under a minute
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import load_average, summary, write_result
from stapo_trl.s2t import (
    entropy_histogram,
    find_spurious_tokens,
    find_spurious_tokens_in_batches,
    global_quantiles,
    histogram_quantiles,
    nonfinite_tokens,
    s2t_statistics,
    stapo_policy_loss,
)

QWEN3_1_7B_HIDDEN = 2048  # Qwen/Qwen3-1.7B-Base config.json: hidden_size
QWEN3_VOCAB = 151936  # Qwen/Qwen3-*-Base config.json: vocab_size
TORCH_QUANTILE_LIMIT = 2**24


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16384, help="tokens per sequence")
    parser.add_argument("--big-sequences", type=int, default=1040, help="sequences of the >2**24-candidate case")
    parser.add_argument("--lm-head-tokens", type=int, default=256, help="tokens of the measured LM-head pass (CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU, see step_cost)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.big_sequences, args.lm_head_tokens, args.repeats = 2048, 8200, 256, 3
    if args.threads is None and not torch.cuda.is_available():
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synthetic_inputs(sequences, tokens, improbable_fraction, seed=0, dev="cpu"):
    """Log-probs, entropies, advantages and mask of `sequences` x `tokens` completions (half the sequences A > 0)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (sequences, tokens)
    improbable = torch.rand(shape, generator=generator) < improbable_fraction
    # Improbable tokens: p in [1e-6, 2e-3); the others p in [0.01, 1].
    logps = torch.where(
        improbable,
        torch.empty(shape).uniform_(-13.8, -6.3, generator=generator),
        torch.empty(shape).uniform_(-4.6, 0.0, generator=generator),
    )
    entropies = torch.empty(shape).exponential_(1.0, generator=generator)
    advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(sequences)])
    mask = torch.ones(shape, dtype=torch.long)
    mask[1::4, tokens // 2 :] = 0  # some shorter completions
    old_logps = logps + 0.05 * torch.randn(shape, generator=generator)
    return {
        "logps": logps.to(dev),
        "old_logps": old_logps.to(dev),
        "entropies": entropies.to(dev),
        "advantages": advantages.to(dev),
        "mask": mask.to(dev),
    }


# --------------------------------------------------------------------------------------------------------------------
# The timed operations
# --------------------------------------------------------------------------------------------------------------------


def op_find(inputs):
    return find_spurious_tokens(inputs["logps"], inputs["entropies"], inputs["advantages"], inputs["mask"].bool())


def op_bookkeeping(inputs, found=None):
    """What `STAPOTrainer._decide` does around the S2T rule for one micro-batch (single process)."""
    logps, entropies, mask = inputs["logps"], inputs["entropies"], inputs["mask"]
    nonfinite = nonfinite_tokens(mask, logps, entropies, inputs["advantages"], inputs["old_logps"])
    scored = mask.bool() & ~nonfinite
    found = found or op_find(inputs)
    silenced = found.spurious
    keep = scored & ~silenced
    statistics = s2t_statistics(mask, scored, keep, found.candidates, silenced, nonfinite, logps, entropies)
    histogram = entropy_histogram(entropies.detach()[scored])
    return statistics, histogram, keep


ENTROPY_PERCENTILES = (0.1, 0.5, 0.9)


def op_percentiles_by_sort(inputs):
    """The percentile metric as it was: a sort of every scored entropy (gathered from all processes) per micro-step."""
    return global_quantiles(inputs["entropies"].detach()[inputs["mask"].bool()], ENTROPY_PERCENTILES)


def op_percentiles_by_histogram(inputs):
    """The percentile metric now: a fixed-bin histogram per micro-step (all-reduced with the window at log time)."""
    return entropy_histogram(inputs["entropies"].detach()[inputs["mask"].bool()])


def op_loss(inputs, keep, num_kept=None):
    logps = inputs["logps"].detach().requires_grad_(True)
    loss = stapo_policy_loss(logps, inputs["old_logps"], inputs["advantages"], keep, num_kept_tokens=num_kept)
    loss.backward()
    return loss


def timed(fn, *args):
    gc.collect()
    sync()
    start = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - start, out


def allocator_peak(fn, *args) -> int:
    """Peak bytes held by torch's allocator while `fn` runs, above the level before it."""
    if torch.cuda.is_available():
        sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*args)
        sync()
        return torch.cuda.max_memory_allocated() - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    level = peak = 0
    for _, size in sorted(events):
        level += size
        peak = max(peak, level)
    return peak


def s2t_case(name, sequences, tokens, improbable_fraction, repeats, dev):
    inputs = synthetic_inputs(sequences, tokens, improbable_fraction, dev=dev)
    found = op_find(inputs)
    _, _, keep = op_bookkeeping(inputs, found)
    full_mask = inputs["mask"].bool()
    parts = {
        "find_spurious_tokens": [],
        "bookkeeping": [],
        "loss_renormalised": [],
        "loss_unmasked": [],
        "percentiles_by_sort": [],
        "percentiles_by_histogram": [],
    }
    histogram = op_percentiles_by_histogram(inputs)
    readout = timed(histogram_quantiles, histogram, ENTROPY_PERCENTILES)[0]
    for _ in range(repeats):
        parts["find_spurious_tokens"].append(timed(op_find, inputs)[0])
        parts["bookkeeping"].append(timed(op_bookkeeping, inputs, found)[0])
        parts["percentiles_by_sort"].append(timed(op_percentiles_by_sort, inputs)[0])
        parts["percentiles_by_histogram"].append(timed(op_percentiles_by_histogram, inputs)[0])
        parts["loss_renormalised"].append(timed(op_loss, inputs, keep)[0])
        parts["loss_unmasked"].append(timed(op_loss, inputs, full_mask)[0])
    medians = {key: summary(values)["median"] for key, values in parts.items()}
    s2t_total = medians["find_spurious_tokens"] + medians["bookkeeping"] + max(
        0.0, medians["loss_renormalised"] - medians["loss_unmasked"]
    )
    memory = {
        "find_spurious_tokens": allocator_peak(op_find, inputs),
        "bookkeeping": allocator_peak(op_bookkeeping, inputs, found),
        "percentiles_by_sort": allocator_peak(op_percentiles_by_sort, inputs),
        "percentiles_by_histogram": allocator_peak(op_percentiles_by_histogram, inputs),
        "loss_renormalised": allocator_peak(op_loss, inputs, keep),
        "loss_unmasked": allocator_peak(op_loss, inputs, full_mask),
    }
    num_tokens = int(inputs["mask"].sum())
    result = {
        "sequences": sequences,
        "tokens_per_sequence": tokens,
        "loss_tokens": num_tokens,
        "candidates": int(found.candidates.sum()),
        "silenced": int(found.spurious.sum()),
        "improbable_fraction_of_tokens": improbable_fraction,
        "time_s": {key: summary(values) for key, values in parts.items()},
        "s2t_added_time_s": s2t_total,
        "percentile_readout_per_log_s": readout,
        "percentiles_exact_vs_histogram": {
            "exact": op_percentiles_by_sort(inputs).tolist(),
            "histogram": histogram_quantiles(histogram, ENTROPY_PERCENTILES),
        },
        "allocator_peak_bytes": memory,
        "input_bytes": sum(t.numel() * t.element_size() for t in inputs.values()),
    }
    print(
        f"[{name}] {sequences}x{tokens}: {result['candidates']:,} candidates, {result['silenced']:,} silenced; "
        f"find {medians['find_spurious_tokens'] * 1e3:.1f} ms, bookkeeping {medians['bookkeeping'] * 1e3:.1f} ms, "
        f"loss renormalised {medians['loss_renormalised'] * 1e3:.1f} ms vs unmasked "
        f"{medians['loss_unmasked'] * 1e3:.1f} ms; S2T adds {s2t_total * 1e3:.1f} ms; peak memory of find "
        f"{memory['find_spurious_tokens'] / 2**20:.1f} MiB; entropy percentiles per micro-step: sort "
        f"{medians['percentiles_by_sort'] * 1e3:.1f} ms ({memory['percentiles_by_sort'] / 2**20:.1f} MiB) -> histogram "
        f"{medians['percentiles_by_histogram'] * 1e3:.1f} ms ({memory['percentiles_by_histogram'] / 2**20:.1f} MiB), "
        f"read-out per log {readout * 1e3:.2f} ms",
        flush=True,
    )
    del inputs, found, keep, full_mask
    gc.collect()
    return result


def quantile_only_case(sequences, tokens, repeats, dev):
    """More candidates than `torch.quantile` accepts: every token of every sequence is a positive candidate."""
    shape = (sequences, tokens)
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "logps": torch.full(shape, -9.0).to(dev),
        "entropies": torch.empty(shape).exponential_(1.0, generator=generator).to(dev),
        "advantages": torch.ones(sequences).to(dev),
        "mask": torch.ones(shape, dtype=torch.bool).to(dev),
    }
    candidates = sequences * tokens
    refused = None
    try:
        torch.quantile(inputs["entropies"].reshape(-1), 0.75)
    except RuntimeError as error:
        refused = str(error).splitlines()[0]
    times = [timed(op_find, inputs)[0] for _ in range(repeats)]
    peak = allocator_peak(op_find, inputs)
    result = {
        "sequences": sequences,
        "tokens_per_sequence": tokens,
        "candidates": candidates,
        "over_torch_quantile_limit": candidates > TORCH_QUANTILE_LIMIT,
        "torch_quantile_error": refused,
        "find_spurious_tokens_time_s": summary(times),
        "allocator_peak_bytes": peak,
        "input_bytes": sum(t.numel() * t.element_size() for t in inputs.values()),
    }
    print(
        f"[over_2pow24] {candidates:,} candidates (> 2**24: {candidates > TORCH_QUANTILE_LIMIT}); torch.quantile: "
        f"{'refuses' if refused else 'accepts'}; find_spurious_tokens {summary(times)['median']:.2f} s, allocator peak "
        f"{peak / 2**20:.0f} MiB",
        flush=True,
    )
    return result


def scope_decisions(candidates_per_micro_step, micro_steps=64, completions_per_micro_step=8, tokens=1024, seeds=20):
    """S2T decisions and the loss gradient of one optimizer step under each `spurious_stats_scope`.

    Every micro-step holds `completions_per_micro_step` completions (one per process at micro-batch 1) of 8 to `tokens`
    tokens, half of them with advantage +1 and half -1; each token of a positive completion is a candidate with the
    probability that gives `candidates_per_micro_step` on average. The gradient compared is d loss / d log-prob of every
    token for the `dapo` loss on-policy (ratio 1, no clipping): -A * keep / denominator, with the step's kept tokens as
    the denominator for `"step"` and TRL's normaliser times the micro-step's kept share for `"micro_batch"`.
    """
    silenced = {"step": 0, "micro_batch": 0}
    candidates = differing = num_tokens = 0
    errors = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        shape = (completions_per_micro_step, tokens)
        rate = 2 * candidates_per_micro_step / (completions_per_micro_step * tokens / 2)  # half the positions hold a token
        batches = []
        for _ in range(micro_steps):
            advantages = torch.tensor([1.0, -1.0] * (completions_per_micro_step // 2))
            lengths = torch.randint(8, tokens + 1, (completions_per_micro_step,), generator=generator)
            mask = torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)
            improbable = torch.rand(shape, generator=generator) < rate
            logps = torch.where(improbable, torch.tensor(-9.0), torch.tensor(-0.1))
            entropies = torch.empty(shape).exponential_(1.0, generator=generator)
            batches.append((logps, entropies, advantages, mask))
        step = find_spurious_tokens_in_batches(*zip(*batches, strict=True))
        micro = [find_spurious_tokens(*batch) for batch in batches]
        step_tokens = sum(int(mask.sum()) for *_, mask in batches)
        step_kept = sum(int((mask & ~whole.spurious).sum()) for (*_, mask), whole in zip(batches, step, strict=True))
        step_grads, micro_grads = [], []
        for (_, _, advantages, mask), whole, alone in zip(batches, step, micro, strict=True):
            candidates += int(whole.candidates.sum())
            silenced["step"] += int(whole.spurious.sum())
            silenced["micro_batch"] += int(alone.spurious.sum())
            differing += int((whole.spurious != alone.spurious).sum())
            num_tokens += int(mask.sum())
            kept_alone = mask & ~alone.spurious
            trl_normaliser = step_tokens  # gradient accumulation == steps_per_generation: the generation batch's count
            micro_denominator = trl_normaliser * kept_alone.sum() / mask.sum()
            step_grads.append(-advantages.unsqueeze(1) * (mask & ~whole.spurious) / step_kept)
            micro_grads.append(-advantages.unsqueeze(1) * kept_alone / micro_denominator)
        step_grad, micro_grad = torch.cat(step_grads).reshape(-1), torch.cat(micro_grads).reshape(-1)
        errors.append(((micro_grad - step_grad).norm() / step_grad.norm()).item())
    result = {
        "candidates_per_micro_step": candidates_per_micro_step,
        "micro_steps": micro_steps,
        "completions_per_micro_step": completions_per_micro_step,
        "seeds": seeds,
        "candidates": candidates,
        "tokens": num_tokens,
        "masked_fraction": {scope: count / num_tokens for scope, count in silenced.items()},
        "silenced_share_of_candidates": {scope: count / max(candidates, 1) for scope, count in silenced.items()},
        "differing_decisions_share_of_candidates": differing / max(candidates, 1),
        "micro_batch_gradient_relative_error": summary(errors),
    }
    print(
        f"[scope_decisions] ~{candidates_per_micro_step} candidates per micro-step: silenced {silenced['step']} "
        f"(step) vs {silenced['micro_batch']} (micro_batch) of {candidates} candidates; decisions differ on "
        f"{100 * result['differing_decisions_share_of_candidates']:.1f}% of candidates; masked fraction "
        f"{100 * result['masked_fraction']['step']:.3f}% (step); micro_batch gradient error "
        f"{100 * summary(errors)['median']:.2f}% (relative L2, median over {seeds} steps)",
        flush=True,
    )
    return result


def lm_head_pass(tokens, repeats, dev, hidden_size=QWEN3_1_7B_HIDDEN, vocab=QWEN3_VOCAB):
    """TRL's fused log-prob + entropy LM head (the kernel behind `add_fused_lm_head`) on `tokens` tokens."""
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(2)
    weight = (torch.randn(vocab, hidden_size, generator=generator) * 0.02).to(dev, dtype).requires_grad_(True)
    hidden = torch.randn(tokens, hidden_size, generator=generator).to(dev, dtype).requires_grad_(True)
    targets = torch.randint(0, vocab, (tokens,), generator=generator).to(dev)

    def forward():
        with torch.no_grad():
            return ChunkedLogProbFunction.apply(
                hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy")
            )

    def forward_backward():
        logps, entropy, *_ = ChunkedLogProbFunction.apply(
            hidden, weight, None, targets, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs", "entropy")
        )
        logps.sum().backward()
        weight.grad = None
        hidden.grad = None

    forward()  # warm-up
    fwd, fwd_bwd = [], []
    for _ in range(repeats):
        fwd.append(timed(forward)[0])
        fwd_bwd.append(timed(forward_backward)[0])
    result = {
        "tokens": tokens,
        "hidden_size": hidden_size,
        "vocab_size": vocab,
        "dtype": str(dtype),
        "vocab_chunk": _CHUNKED_LOGPROB_CHUNK_SIZE,
        "forward_s": summary(fwd),
        "forward_backward_s": summary(fwd_bwd),
        "forward_backward_allocator_peak_bytes": allocator_peak(forward_backward),
    }
    print(
        f"[lm_head] fused log-prob+entropy, hidden {hidden_size}, vocab {vocab}, {tokens} tokens ({dtype}): forward "
        f"{summary(fwd)['median']:.2f} s, forward+backward {summary(fwd_bwd)['median']:.2f} s",
        flush=True,
    )
    return result


def main(argv=None):
    args = parse_args(argv)
    dev = device()
    print(f"device {dev}, torch threads {torch.get_num_threads()}, load average {load_average()}", flush=True)
    batch_tokens = args.sequences * args.tokens
    lm_tokens = batch_tokens if dev.type == "cuda" else args.lm_head_tokens
    lm_head = lm_head_pass(lm_tokens, max(2, args.repeats // 2), dev)
    scale = batch_tokens / lm_tokens
    fused_fwd = lm_head["forward_s"]["median"] * scale
    fused_fwd_bwd = lm_head["forward_backward_s"]["median"] * scale
    cases = {
        "paper_batch_1pct_improbable": s2t_case(
            "paper_batch, 1% improbable", args.sequences, args.tokens, 0.01, args.repeats, dev
        ),
        "paper_batch_all_candidates": s2t_case(
            "paper_batch, every positive token a candidate", args.sequences, args.tokens, 1.0, args.repeats, dev
        ),
    }
    comparison = {}
    for name, case in cases.items():
        comparison[name] = {
            "s2t_added_time_s": case["s2t_added_time_s"],
            "fused_pass_forward_s": fused_fwd,
            "fused_pass_forward_backward_s": fused_fwd_bwd,
            "s2t_over_fused_forward_backward": case["s2t_added_time_s"] / fused_fwd_bwd,
        }
        print(
            f"{name}: S2T adds {case['s2t_added_time_s'] * 1e3:.1f} ms = "
            f"{100 * case['s2t_added_time_s'] / fused_fwd_bwd:.4f}% of the LM head's fused forward+backward "
            f"({fused_fwd_bwd:.1f} s for {batch_tokens:,} tokens{'' if scale == 1 else f', scaled x{scale:g} from {lm_tokens}'})",
            flush=True,
        )
    decisions = [scope_decisions(rate) for rate in (0.5, 1, 2, 5, 20)]
    big = quantile_only_case(args.big_sequences, args.tokens, max(2, args.repeats // 2), dev)
    write_result(
        "s2t_op",
        {
            "settings": {**vars(args), "device": str(dev)},
            "lm_head_pass": lm_head,
            "lm_head_scale_to_batch": scale,
            "cases": cases,
            "comparison_to_fused_pass": comparison,
            "over_2pow24_case": big,
            "scope_decisions": decisions,
            "load_average_end": load_average(),
        },
        output=args.output or Path(__file__).resolve().parent / "results" / f"s2t_op_{dev.type}.json",
    )


if __name__ == "__main__":
    main()
