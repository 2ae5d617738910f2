"""What the notebooks need around the library: their mode and output folder from the environment, the offline setting
(a tiny model warm-started on addition in seconds) and a live training plot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..plots import save_figure

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


# A smaller model than the CPU demo's (`stapo_trl.demo`), on single-digit addition, so that a notebook warm-starts it in
# seconds: the notebooks' headless runs only need a policy that is right some of the time.
OFFLINE_MODEL_SIZE = "notebook"


OFFLINE_MAX_OPERAND = 9


def offline_setup(seed: int = 0, warm_start_steps: int = 120, lr: float = 3e-3, num_eval: int = 10):
    """`(model, tokenizer, train_ds, eval_ds)` for the notebooks' offline mode, built locally in seconds.

    The demo task of `stapo_trl.demo` ("What is a+b?" answered `\\boxed{a+b}`) with operands 0-9 and disjoint
    held-out pairs, the demo's character tokenizer, a ~0.1M-parameter Qwen3-architecture model and a short supervised
    warm start (`stapo_trl.demo.warm_start`): about 40% greedy accuracy on the training pairs after 120 steps, so that
    sampled groups hold both right and wrong answers.
    """
    from transformers import set_seed

    from .. import demo
    from ..tiny import build_tiny_qwen3

    set_seed(seed)
    tokenizer = demo.build_demo_tokenizer()
    train_ds, eval_ds = demo.make_demo_datasets(seed=seed, max_operand=OFFLINE_MAX_OPERAND, num_eval=num_eval)
    model = build_tiny_qwen3(tokenizer, OFFLINE_MODEL_SIZE, seed=seed)
    if warm_start_steps > 0:
        demo.warm_start(model, tokenizer, train_ds, None, target_accuracy=None, max_steps=warm_start_steps, lr=lr,
                        seed=seed, progress=False)
    return model, tokenizer, train_ds, eval_ds


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

    from ..plots import plot_runs

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
                save_figure(self._figure(state), output_path)

    return LivePlotCallback()
