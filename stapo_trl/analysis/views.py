"""Views of one analysed group: an HTML rendering of the silenced tokens and figures (bare `matplotlib.figure.Figure`
objects, no pyplot state, as in `stapo_trl.plots`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence

import torch

from ..plots import save_figure
from .token_stats import TokenAnalysis, gradient_norm_proxy, silenced_counts, softmax_gradient_norm

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
    save_figure(figure, output_path)
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
    save_figure(figure, output_path)
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
    save_figure(figure, output_path)
    return figure
