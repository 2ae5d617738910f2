"""Helpers for looking at spurious tokens and comparing runs (used by the notebooks in `notebooks/`).

Nothing here re-implements the method: the mask is `stapo_trl.s2t.find_spurious_tokens`, the reward
`stapo_trl.rewards.boxed_reward`, per-token probabilities and entropies come from TRL's fused LM head (the pass the
trainer itself uses), and curves are drawn with `stapo_trl.plots`. This module adds what a notebook needs around
them: sampling a group of completions with their token ids, GRPO's group-normalised advantages, the per-token
gradient-norm proxy, an HTML view of the silenced tokens, a few figures, a live training plot and run loaders.

Figures are bare `matplotlib.figure.Figure` objects (no pyplot state), as in `stapo_trl.plots`.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .s2t import SpuriousTokens, find_spurious_tokens

# Environment variables read by the notebooks.
MODE_ENV = "STAPO_NOTEBOOK_MODE"  # "offline": the tiny local model and data, no network
OUTPUT_DIR_ENV = "STAPO_NOTEBOOK_OUTPUT_DIR"  # where the notebooks save their figures


def notebook_mode(default: str = "online") -> str:
    """`"offline"` when `STAPO_NOTEBOOK_MODE=offline` (or `HF_HUB_OFFLINE=1` and no mode set), else `default`."""
    mode = os.environ.get(MODE_ENV)
    if mode:
        return mode.strip().lower()
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return "offline"
    return default


def notebook_output_dir(default: str | os.PathLike) -> Path:
    """The folder for a notebook's figures: `$STAPO_NOTEBOOK_OUTPUT_DIR` when set, else `default` (created)."""
    path = Path(os.environ.get(OUTPUT_DIR_ENV) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------------
# The offline setting of the notebooks
# ----------------------------------------------------------------------------------------------------------------

# A smaller model than the CPU demo's (`stapo_trl.demo`), on single-digit addition, so that a notebook warm-starts it in
# seconds: the notebooks' headless runs only need a policy that is right some of the time.
OFFLINE_MODEL_KWARGS = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=256,
    max_position_embeddings=32,
)
OFFLINE_MAX_OPERAND = 9


def offline_setup(seed: int = 0, warm_start_steps: int = 120, lr: float = 3e-3, num_eval: int = 10):
    """`(model, tokenizer, train_ds, eval_ds)` for the notebooks' offline mode, built locally in seconds.

    The demo task of `stapo_trl.demo` ("What is a+b?" answered `\\boxed{a+b}`) with operands 0-9 and disjoint
    held-out pairs, the demo's character tokenizer, a ~0.1M-parameter Qwen3-architecture model and a short supervised
    warm start (`stapo_trl.demo.warm_start`): about 40% greedy accuracy on the training pairs after 120 steps, so that
    sampled groups hold both right and wrong answers.
    """
    from transformers import set_seed

    from . import demo
    from .tiny import build_tiny_qwen3

    set_seed(seed)
    tokenizer = demo.build_demo_tokenizer()
    train_ds, eval_ds = demo.make_demo_datasets(seed=seed, max_operand=OFFLINE_MAX_OPERAND, num_eval=num_eval)
    model = build_tiny_qwen3(tokenizer, seed=seed, **OFFLINE_MODEL_KWARGS)
    if warm_start_steps > 0:
        demo.warm_start(model, tokenizer, train_ds, None, target_accuracy=None, max_steps=warm_start_steps, lr=lr,
                        seed=seed, progress=False)
    return model, tokenizer, train_ds, eval_ds


# ----------------------------------------------------------------------------------------------------------------
# Sampling a group
# ----------------------------------------------------------------------------------------------------------------


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
    from .evaluation import SamplingParams, TransformersGenerator, format_prompt

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


# ----------------------------------------------------------------------------------------------------------------
# Per-token probability, entropy and the gradient-norm proxy
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Everything for one group: rewards, advantages, statistics, the S2T mask
# ----------------------------------------------------------------------------------------------------------------


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
        from .rewards import boxed_reward as reward_fn
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


# ----------------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------------

_SILENCED_STYLE = "background:#e4572e;color:white;border-radius:3px;padding:0 1px"
_CANDIDATE_STYLE = "background:#ffd166;border-radius:3px;padding:0 1px"


def _token_text(tokenizer, token_id: int) -> str:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text if text else tokenizer.convert_ids_to_tokens(token_id)


def completions_html(
    analysis: TokenAnalysis, tokenizer, groups: Sequence[int] | None = None, max_completions: int | None = None
) -> str:
    """The completions as HTML: silenced tokens in red, candidates kept as exploration (positive advantage,
    p < tau_p, entropy >= tau_h) in yellow; hover a token for its probability and entropy.

    `groups`: the problems to show (all by default); `max_completions`: at most this many completions."""
    rollout = analysis.rollout
    rows = []
    selected = [row for row, group in enumerate(rollout.groups) if groups is None or group in set(groups)]
    if max_completions is not None:
        selected = selected[:max_completions]
    for row in selected:
        length = int(rollout.completion_mask[row].sum())
        pieces = []
        for position in range(length):
            token_id = int(rollout.completion_ids[row, position])
            text = html.escape(_token_text(tokenizer, token_id)).replace("\n", "\u21b5<br>")
            p = float(analysis.stats.probs[row, position])
            h = float(analysis.stats.entropies[row, position])
            title = f"p={p:.4g}  H={h:.3f}"
            if analysis.found.spurious[row, position]:
                pieces.append(f'<span style="{_SILENCED_STYLE}" title="silenced: {title}">{text}</span>')
            elif analysis.found.candidates[row, position]:
                pieces.append(f'<span style="{_CANDIDATE_STYLE}" title="candidate kept: {title}">{text}</span>')
            else:
                pieces.append(f'<span title="{title}">{text}</span>')
        reward = float(analysis.rewards[row])
        advantage = float(analysis.advantages[row])
        problem = html.escape(rollout.prompt_texts[row][-160:])
        header = (
            f"<b>problem {row // rollout.num_generations}, sample {row % rollout.num_generations}</b> "
            f"&mdash; reward {reward:+.0f}, advantage {advantage:+.2f}, "
            f"{int(analysis.found.spurious[row].sum())} silenced"
        )
        if row % rollout.num_generations == 0:
            rows.append(f'<div style="color:#555;margin-top:10px"><i>&hellip;{problem}</i> (gold: '
                        f"{html.escape(rollout.answers[row])})</div>")
        rows.append(
            f'<div style="margin:4px 0 8px 0">{header}<div style="font-family:monospace;white-space:pre-wrap;'
            f'border-left:3px solid {"#2a9d8f" if advantage > 0 else "#aaa"};padding-left:6px">'
            f'{"".join(pieces)}</div></div>'
        )
    legend = (
        f'<div><span style="{_SILENCED_STYLE}">silenced</span> spurious token (A&gt;0, p&lt;{analysis.tau_p:g}, '
        f'H&lt;tau_h) &nbsp; <span style="{_CANDIDATE_STYLE}">kept</span> candidate above tau_h (exploration)</div>'
    )
    return legend + "".join(rows)


def _scatter_groups(analysis: TokenAnalysis):
    mask = analysis.mask
    positive = (analysis.advantages.unsqueeze(1) > 0).expand_as(mask) & mask
    silenced = analysis.found.spurious
    kept_candidates = analysis.found.candidates & ~silenced
    other_positive = positive & ~analysis.found.candidates
    non_positive = mask & ~positive
    return [
        (non_positive, "A <= 0", dict(color="0.6", s=8, alpha=0.35)),
        (other_positive, "A > 0", dict(color="#2a9d8f", s=10, alpha=0.5)),
        (kept_candidates, "candidate kept (H >= tau_h)", dict(color="#f4a261", s=26, marker="D")),
        (silenced, "silenced (S2T)", dict(color="#e4572e", s=48, marker="X")),
    ]


def plot_prob_entropy(analysis: TokenAnalysis, output_path: str | os.PathLike | None = None, title: str | None = None):
    """Probability (log scale) vs entropy of every completion token, with the tau_p and tau_h lines and the silenced
    tokens marked: the silenced ones sit in the lower-left box (improbable, confident, A > 0)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    axis = figure.subplots()
    probs = analysis.stats.probs.clamp(min=1e-12)
    for selection, label, style in _scatter_groups(analysis):
        if selection.any():
            axis.scatter(probs[selection], analysis.stats.entropies[selection], label=f"{label} ({int(selection.sum())})",
                         **style)
    axis.axvline(analysis.tau_p, color="#e4572e", linestyle="--", linewidth=1)
    axis.text(analysis.tau_p, 1.0, f" tau_p={analysis.tau_p:g}", color="#e4572e", va="top",
              transform=axis.get_xaxis_transform(), fontsize=8)
    if analysis.tau_h is not None:
        axis.axhline(analysis.tau_h, color="#6a4c93", linestyle="--", linewidth=1)
        axis.text(1.0, analysis.tau_h, f"tau_h={analysis.tau_h:.3f} (q={analysis.q:g}) ", color="#6a4c93",
                  ha="right", va="bottom", transform=axis.get_yaxis_transform(), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("probability of the sampled token p")
    axis.set_ylabel("entropy of the position H (nats)")
    axis.set_title(title or f"{analysis.num_silenced} of {analysis.num_tokens} tokens silenced")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    _save(figure, output_path)
    return figure


def plot_gradient_proxy(analysis: TokenAnalysis, output_path: str | os.PathLike | None = None):
    """Left: the per-token gradient-norm proxy `|A| * ||onehot(y) - softmax||` against p, coloured by entropy, the
    silenced tokens circled. Right: the softmax part alone against p for the lowest and highest entropy thirds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11.0, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    mask = analysis.mask
    probs = analysis.stats.probs.clamp(min=1e-12)
    proxy = gradient_norm_proxy(analysis.stats, analysis.advantages)
    norm = softmax_gradient_norm(analysis.stats.logps, analysis.stats.log_sum_sq_probs)
    entropies = analysis.stats.entropies
    points = left.scatter(probs[mask], proxy[mask], c=entropies[mask], cmap="viridis", s=10, alpha=0.8)
    figure.colorbar(points, ax=left, label="entropy H (nats)")
    silenced = analysis.found.spurious
    if silenced.any():
        left.scatter(probs[silenced], proxy[silenced], facecolors="none", edgecolors="#e4572e", s=90, linewidths=1.5,
                     label=f"silenced ({int(silenced.sum())})")
        left.legend(fontsize=8)
    left.axvline(analysis.tau_p, color="#e4572e", linestyle="--", linewidth=1)
    left.set_xscale("log")
    left.set_xlabel("probability p")
    left.set_ylabel("|A| * ||onehot(y) - softmax||")
    left.set_title("per-token policy-gradient norm proxy")
    left.grid(alpha=0.3)

    values = entropies[mask]
    if values.numel() >= 3:
        low, high = torch.quantile(values, torch.tensor([1 / 3, 2 / 3]))
        for selection, label, color in (
            (mask & (entropies <= low), f"H <= {float(low):.2f} (confident)", "#440154"),
            (mask & (entropies >= high), f"H >= {float(high):.2f} (uncertain)", "#fde725"),
        ):
            if selection.any():
                right.scatter(probs[selection], norm[selection], s=10, alpha=0.7, color=color, label=label,
                              edgecolors="0.3" if color == "#fde725" else None, linewidths=0.3)
    grid = torch.logspace(-6, 0, 200)
    right.plot(grid, (1 - grid), color="0.3", linewidth=1, label="1 - p (lower bound)")
    right.plot(grid, (2 * (1 - grid) ** 2).sqrt(), color="0.3", linestyle=":", linewidth=1,
               label="sqrt(2) (1 - p) (all other mass on one token)")
    right.set_xscale("log")
    right.set_xlabel("probability p")
    right.set_ylabel("||onehot(y) - softmax||")
    right.set_title("softmax part: falls with p, higher when confident", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    _save(figure, output_path)
    return figure


def plot_silenced_sweep(
    analysis: TokenAnalysis,
    tau_ps: Sequence[float] | None = None,
    qs: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    output_path: str | os.PathLike | None = None,
):
    """Silenced tokens as tau_p grows, one line per q (the current setting is marked)."""
    from matplotlib.figure import Figure

    if tau_ps is None:
        tau_ps = [float(x) for x in torch.logspace(-5, 0, 26)]
    counts = silenced_counts(analysis, tau_ps, qs)
    figure = Figure(figsize=(6.5, 4.0), layout="constrained")
    axis = figure.subplots()
    for q, values in counts.items():
        axis.plot(tau_ps, values, marker=".", label=f"q = {q:g}")
    axis.scatter([analysis.tau_p], [analysis.num_silenced], color="#e4572e", s=80, zorder=5,
                 label=f"current (tau_p={analysis.tau_p:g}, q={analysis.q:g})")
    axis.set_xscale("log")
    axis.set_xlabel("tau_p")
    axis.set_ylabel("silenced tokens")
    axis.set_title(f"how many of {analysis.num_tokens} tokens S2T silences")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, output_path)
    return figure


def _save(figure, output_path) -> None:
    if output_path is None:
        return
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=110)


# ----------------------------------------------------------------------------------------------------------------
# Training: a live plot
# ----------------------------------------------------------------------------------------------------------------


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def live_plot_callback(keys: Sequence[str] = ("reward", "entropy", "stapo/masked_frac"), every: int = 1,
                       output_path: str | os.PathLike | None = None, smooth: int = 0):
    """A `TrainerCallback` that redraws `stapo_trl.plots.plot_runs` of the trainer's log history in place every
    `every` logs (in a notebook) and saves the final figure to `output_path` when training ends."""
    from transformers import TrainerCallback

    from .plots import plot_runs

    class LivePlotCallback(TrainerCallback):
        def __init__(self):
            self.handle = None
            self.count = 0

        def _figure(self, state):
            records = [{"step": r.get("step"), **r} for r in state.log_history]
            return plot_runs({"run": records}, keys=keys, smooth=smooth)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not _in_notebook():
                return
            self.count += 1
            if self.count % every:
                return
            from IPython.display import display

            figure = self._figure(state)
            if self.handle is None:
                self.handle = display(figure, display_id=True)
            else:
                self.handle.update(figure)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and output_path is not None:
                _save(self._figure(state), output_path)

    return LivePlotCallback()


# ----------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------

WANDB_PREFIX = "wandb:"


def _latest_trainer_state(folder: Path) -> Path | None:
    if (folder / "trainer_state.json").is_file():
        return folder / "trainer_state.json"
    checkpoints = sorted(folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def load_run(source: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A run's logged records (dicts with `step`), from any of:

    - a `trainer_state.json` (its `log_history`), a `metrics.jsonl` (`stapo_trl.demo.DemoMetricsCallback`) or a JSON
      list of records;
    - a run folder holding one of those (`trainer_state.json` there or in its latest `checkpoint-*`, else
      `metrics.jsonl`);
    - `"wandb:entity/project/run_id"`: the run's history from the W&B API (needs network and a login); TRL's
      `train/` prefix is removed so that keys match the local logs;
    - a list of records.
    A mean benchmark accuracy `eval/avg_accuracy` is added to records that log `eval/<benchmark>/avg@<n>`.
    """
    from .plots import load_metrics

    if isinstance(source, str) and source.startswith(WANDB_PREFIX):
        records = _load_wandb_run(source[len(WANDB_PREFIX) :])
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            state = _latest_trainer_state(path)
            if state is not None:
                path = state
            elif (path / "metrics.jsonl").is_file():
                path = path / "metrics.jsonl"
            else:
                raise FileNotFoundError(f"{source}: no trainer_state.json, checkpoint-*/ or metrics.jsonl")
        text = path.read_text(encoding="utf-8").lstrip()
        if text.startswith("{") and path.suffix == ".json":
            document = json.loads(text)
            records = [dict(r) for r in document.get("log_history", [])]
        else:
            records = load_metrics(path)
    else:
        records = load_metrics(source)
    return [_with_mean_eval_accuracy(record) for record in records]


def _with_mean_eval_accuracy(record: dict[str, Any]) -> dict[str, Any]:
    accuracies = [
        value
        for key, value in record.items()
        if key.startswith("eval/") and "/avg@" in key and isinstance(value, (int, float)) and math.isfinite(value)
    ]
    if accuracies and "eval/avg_accuracy" not in record:
        record = {**record, "eval/avg_accuracy": sum(accuracies) / len(accuracies)}
    return record


def _load_wandb_run(path: str) -> list[dict[str, Any]]:
    import wandb

    run = wandb.Api().run(path)
    records = []
    for row in run.scan_history():
        record = {}
        for key, value in row.items():
            if key.startswith("_"):
                continue
            record[key[len("train/") :] if key.startswith("train/") else key] = value
        step = record.pop("global_step", None)
        record["step"] = step if step is not None else row.get("_step")
        records.append(record)
    return records


def load_eval_results(source: str | os.PathLike) -> dict[str, Any] | None:
    """A run's final evaluation (`eval_results.json` in the folder or in `<folder>/eval/*/`), or `None`."""
    from .evaluation import EVAL_RESULTS_FILE, EVAL_SUBDIR, load_results

    folder = Path(source)
    if folder.is_file():
        folder = folder.parent
    candidates = [folder / EVAL_RESULTS_FILE, *sorted((folder / EVAL_SUBDIR).glob(f"*/{EVAL_RESULTS_FILE}"))]
    for candidate in candidates:
        if candidate.is_file():
            return load_results(candidate)
    return None


def plot_eval_bars(results: Mapping[str, Mapping[str, Any]], output_path: str | os.PathLike | None = None):
    """Final avg@n per benchmark (and their average), one bar per run: `{label: eval_results}`."""
    from matplotlib.figure import Figure

    from .evaluation import display_name, in_benchmark_order

    names = in_benchmark_order(name for run in results.values() for name in run["benchmarks"])
    columns = [*names, "average"]
    figure = Figure(figsize=(max(5.0, 1.6 * len(columns) + 2), 3.8), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / max(len(results), 1)
    for index, (label, run) in enumerate(results.items()):
        values = [run["benchmarks"].get(name, {}).get("accuracy", float("nan")) for name in names]
        values.append(run.get("average", {}).get("accuracy") or float("nan"))
        positions = [column + (index - (len(results) - 1) / 2) * width for column in range(len(columns))]
        bars = axis.bar(positions, values, width=width, label=label, color=f"C{index % 10}")
        axis.bar_label(bars, fmt="%.1f", fontsize=7)
    axis.set_xticks(range(len(columns)), [display_name(n) for n in names] + ["Average"])
    axis.set_ylabel("avg@n accuracy (%)")
    axis.set_title("final evaluation")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, output_path)
    return figure
