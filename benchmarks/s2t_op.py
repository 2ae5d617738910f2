"""The S2T operation alone at realistic sizes, next to the fused log-prob/entropy pass it rides on.

Measured, each as the median of `--repeats` runs (interleaved), with torch's allocator peak:
- `find_spurious_tokens`: candidates (A > 0, p < tau_p), the global 0.75-quantile of the candidates' entropies, the
  spurious mask;
- the trainer's bookkeeping around it (`STAPOTrainer._compute_loss`): non-finite check, the eight global counts, and
  the 10/50/90% entropy percentiles of the scored tokens that feed the `stapo/*` metrics;
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
  elements `torch.quantile` accepts, the size of a gathered candidate set on many GPUs.

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
from stapo_trl.s2t import find_spurious_tokens, global_quantiles, nonfinite_tokens, stapo_policy_loss

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
    """What `STAPOTrainer._compute_loss` does around `find_spurious_tokens` (single process)."""
    logps, entropies, mask = inputs["logps"], inputs["entropies"], inputs["mask"]
    nonfinite = nonfinite_tokens(mask, logps, entropies, inputs["advantages"], inputs["old_logps"])
    scored = mask.bool() & ~nonfinite
    found = found or op_find(inputs)
    silenced = found.spurious
    keep = scored & ~silenced
    counts = torch.stack(
        [
            mask.sum().double(),
            scored.sum(),
            keep.sum(),
            found.candidates.sum(),
            silenced.sum(),
            nonfinite.sum(),
            entropies.detach()[silenced].sum(),
            logps.detach()[silenced].exp().sum(),
        ]
    ).double()
    percentiles = global_quantiles(entropies.detach()[scored], (0.1, 0.5, 0.9))
    return counts, percentiles, keep


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
    parts = {"find_spurious_tokens": [], "bookkeeping": [], "loss_renormalised": [], "loss_unmasked": []}
    for _ in range(repeats):
        parts["find_spurious_tokens"].append(timed(op_find, inputs)[0])
        parts["bookkeeping"].append(timed(op_bookkeeping, inputs, found)[0])
        parts["loss_renormalised"].append(timed(op_loss, inputs, keep)[0])
        parts["loss_unmasked"].append(timed(op_loss, inputs, full_mask)[0])
    medians = {key: summary(values)["median"] for key, values in parts.items()}
    s2t_total = medians["find_spurious_tokens"] + medians["bookkeeping"] + max(
        0.0, medians["loss_renormalised"] - medians["loss_unmasked"]
    )
    memory = {
        "find_spurious_tokens": allocator_peak(op_find, inputs),
        "bookkeeping": allocator_peak(op_bookkeeping, inputs, found),
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
        "allocator_peak_bytes": memory,
        "input_bytes": sum(t.numel() * t.element_size() for t in inputs.values()),
    }
    print(
        f"[{name}] {sequences}x{tokens}: {result['candidates']:,} candidates, {result['silenced']:,} silenced; "
        f"find {medians['find_spurious_tokens'] * 1e3:.1f} ms, bookkeeping {medians['bookkeeping'] * 1e3:.1f} ms, "
        f"loss renormalised {medians['loss_renormalised'] * 1e3:.1f} ms vs unmasked "
        f"{medians['loss_unmasked'] * 1e3:.1f} ms; S2T adds {s2t_total * 1e3:.1f} ms; peak memory of find "
        f"{memory['find_spurious_tokens'] / 2**20:.1f} MiB",
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
            "load_average_end": load_average(),
        },
        output=args.output or Path(__file__).resolve().parent / "results" / f"s2t_op_{dev.type}.json",
    )


if __name__ == "__main__":
    main()
