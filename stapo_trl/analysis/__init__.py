"""Helpers for looking at spurious tokens and comparing runs (used by the notebooks in `notebooks/`).

Nothing here re-implements the method: the mask is `stapo_trl.s2t.find_spurious_tokens`, the reward
`stapo_trl.rewards.boxed_reward`, per-token probabilities and entropies come from TRL's fused LM head (the pass the
trainer itself uses), and curves are drawn with `stapo_trl.plots`. The modules add what a notebook needs around
them (every public name is re-exported here):

- `notebook`: the notebooks' mode and output folder, the offline setting (`offline_setup`), a live training plot;
- `rollout`: sampling a group of completions with their token ids (`sample_group`), GRPO's group-normalised
  advantages;
- `token_stats`: per-token probability and entropy, the per-token gradient-norm proxy, and `analyse_rollout`:
  everything for one group, the S2T mask included;
- `views`: an HTML view of the silenced tokens and the figures of one group;
- `runs`: run and evaluation-result loaders and the final-evaluation bar chart.

Figures are bare `matplotlib.figure.Figure` objects (no pyplot state), as in `stapo_trl.plots`.
"""

from .notebook import (
    MODE_ENV,
    OFFLINE_MAX_OPERAND,
    OFFLINE_MODEL_SIZE,
    OUTPUT_DIR_ENV,
    live_plot_callback,
    notebook_mode,
    notebook_output_dir,
    offline_setup,
)
from .rollout import (
    Rollout,
    group_advantages,
    sample_group,
)
from .runs import (
    WANDB_PREFIX,
    load_eval_results,
    load_run,
    plot_eval_bars,
)
from .token_stats import (
    TokenAnalysis,
    TokenStats,
    analyse_rollout,
    gradient_norm_proxy,
    per_token_logps_and_entropies,
    silenced_counts,
    softmax_gradient_norm,
)
from .views import (
    completions_html,
    plot_gradient_proxy,
    plot_prob_entropy,
    plot_silenced_sweep,
)

__all__ = [
    "analyse_rollout",
    "completions_html",
    "gradient_norm_proxy",
    "group_advantages",
    "live_plot_callback",
    "load_eval_results",
    "load_run",
    "MODE_ENV",
    "notebook_mode",
    "notebook_output_dir",
    "OFFLINE_MAX_OPERAND",
    "OFFLINE_MODEL_SIZE",
    "offline_setup",
    "OUTPUT_DIR_ENV",
    "per_token_logps_and_entropies",
    "plot_eval_bars",
    "plot_gradient_proxy",
    "plot_prob_entropy",
    "plot_silenced_sweep",
    "Rollout",
    "sample_group",
    "silenced_counts",
    "softmax_gradient_norm",
    "TokenAnalysis",
    "TokenStats",
    "WANDB_PREFIX",
]
