"""Shared helpers of the benchmark scripts: machine description, result files, models, batches and trainers.

Nothing here downloads anything: models are built by `stapo_trl.tiny.build_qwen3` with random weights, and batches are random
token ids in the shape `GRPOTrainer._prepare_inputs` hands to `compute_loss`.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# The one model and tokenizer builder of the project, re-exported under the names the benchmark scripts use.
from stapo_trl.tiny import build_addition_tokenizer as char_tokenizer  # noqa: E402, F401
from stapo_trl.tiny import build_qwen3  # noqa: E402, F401

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------------------------
# Machine and results
# --------------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the figures were measured on, including the load at the time (other jobs share the machine)."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "hostname_cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import transformers
        import trl

        info["trl"] = trl.__version__
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    info["memory_total_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        pass
    return info


def write_result(name: str, payload: dict, output: str | os.PathLike | None = None) -> Path:
    """Write `payload` (plus the machine description) as JSON under `benchmarks/results/` (or `output`)."""
    path = Path(output) if output else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
    return path


def median(values):
    return statistics.median(values) if values else float("nan")


def summary(values: list[float]) -> dict:
    """Median, quartiles, min and max of a list of timings."""
    if not values:
        return {}
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p25": quartiles[0],
        "p75": quartiles[2],
        "min": ordered[0],
        "max": ordered[-1],
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux `ru_maxrss` is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm", encoding="utf-8") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------------------------
# Models, batches, trainers
# --------------------------------------------------------------------------------------------------------------------


def random_batch(
    batch_size: int,
    prompt_length: int,
    completion_length: int,
    vocab_size: int,
    num_generations: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    min_completion_fraction: float = 0.5,
) -> dict:
    """A loss-time batch shaped as `GRPOTrainer._prepare_inputs` returns it (TRL 1.16).

    Left-padded prompts, right-padded completions whose lengths vary between `min_completion_fraction` and all of
    `completion_length` (the longest always fills it), group-normalised +-1 rewards as advantages (about half the
    sequences positive), no `old_per_token_logps` (on-policy, `num_iterations=1`: TRL reuses the detached current
    log-probabilities).
    """
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, vocab_size, (batch_size, prompt_length), generator=generator)
    prompt_mask = torch.ones_like(prompt_ids)
    for row in range(batch_size):
        pad = int(torch.randint(0, max(1, prompt_length // 4), (1,), generator=generator))
        prompt_mask[row, :pad] = 0
        prompt_ids[row, :pad] = 0
    completion_ids = torch.randint(3, vocab_size, (batch_size, completion_length), generator=generator)
    completion_mask = torch.zeros_like(completion_ids)
    low = max(1, int(min_completion_fraction * completion_length))
    lengths = torch.randint(low, completion_length + 1, (batch_size,), generator=generator)
    lengths[0] = completion_length
    for row, length in enumerate(lengths.tolist()):
        completion_mask[row, :length] = 1
        if length < completion_length:
            completion_ids[row, length - 1] = 1  # eos
            completion_ids[row, length:] = 0
    rewards = torch.where(torch.rand(batch_size, generator=generator) < 0.5, -1.0, 1.0)
    grouped = rewards.view(-1, num_generations)
    # Groups where every reward is equal would have zero advantage: flip one so that every group carries signal.
    for group in grouped:
        if bool((group == group[0]).all()):
            group[0] = -group[0]
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    advantages = ((grouped - mean) / (std + 1e-4)).view(-1)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "num_items_in_batch": completion_mask.sum(),
    }
    return {key: value.to(device) for key, value in batch.items()}


def clone_batch(batch: dict) -> dict:
    return {key: value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value) for key, value in batch.items()}


def _dummy_dataset(num: int = 16):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"What is {a}+{a}?"} for a in range(num)])


def _zero_reward(completions, **kwargs):
    return [0.0 for _ in completions]


VARIANTS = ("grpo", "stapo_s2t_off", "stapo_s2t_on_micro_batch", "stapo_s2t_on_step_before", "stapo_s2t_on")
VARIANT_LABELS = {
    "grpo": "TRL GRPOTrainer",
    "stapo_s2t_off": "STAPOTrainer, S2T off",
    "stapo_s2t_on_micro_batch": "STAPO, S2T on, micro_batch",
    "stapo_s2t_on_step_before": "STAPO, S2T on, step, scoring every row padded (before)",
    "stapo_s2t_on": "STAPO, S2T on, step",
}


def build_trainer(
    variant: str,
    model,
    batch_size: int,
    num_generations: int,
    completion_length: int,
    output_dir: str | None = None,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    loss_type: str = "dapo",
    **config_overrides,
):
    """`GRPOTrainer` or `STAPOTrainer` with identical settings (the paper's DAPO loss, clip-higher, no KL).

    The optimizer and scheduler are created right away so that a step can be run by hand with
    `trainer.training_step` on a prepared batch (see `step_cost.py`). `config_overrides` go to the config.
    """
    from trl import GRPOConfig, GRPOTrainer

    from stapo_trl import STAPOConfig, STAPOTrainer

    output_dir = output_dir or tempfile.mkdtemp(prefix=f"bench-{variant}-")
    settings = dict(
        output_dir=output_dir,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        per_device_train_batch_size=batch_size,
        num_generations=num_generations,
        max_completion_length=completion_length,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        loss_type=loss_type,
        epsilon=0.2,
        epsilon_high=0.28,
        beta=0.0,
        learning_rate=1e-6,
        max_grad_norm=1.0,
        activation_checkpointing=gradient_checkpointing,
        disable_dropout=True,
        **config_overrides,
    )
    if variant == "grpo":
        trainer_class, config = GRPOTrainer, GRPOConfig(**settings)
    elif variant in ("stapo_s2t_on", "stapo_s2t_on_step_before", "stapo_s2t_on_micro_batch", "stapo_s2t_off"):
        scope = "micro_batch" if variant == "stapo_s2t_on_micro_batch" else "step"
        config = STAPOConfig(
            silence_spurious_tokens=variant != "stapo_s2t_off", spurious_stats_scope=scope, **settings
        )
        trainer_class = STAPOTrainer
    else:
        raise ValueError(f"unknown variant {variant!r}")
    trainer = trainer_class(
        model=model,
        reward_funcs=_zero_reward,
        args=config,
        train_dataset=_dummy_dataset(max(16, batch_size)),
        processing_class=char_tokenizer(),
    )
    if variant == "stapo_s2t_on_step_before":
        score_every_row_padded(trainer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1
    # The batch is prepared by the benchmark: skip generation and scoring.
    trainer._prepare_inputs = lambda inputs: inputs
    return trainer


def score_every_row_padded(trainer):
    """Make a `STAPOTrainer`'s step scope score as it did before it scored only candidate rows: every row of every
    micro-batch that needs scoring, as TRL pads it, one call per micro-batch (the "before" of the benchmarks)."""
    trainer._scores_whole_micro_batches = lambda step_inputs: True
    return trainer


def optimizer_step(trainer, *micro_batches: dict) -> None:
    """One optimizer step over prepared micro-batches: `training_step` (loss + backward) for each, then clipping,
    AdamW, zero_grad.

    With `spurious_stats_scope="step"` the step is first decided as `STAPOTrainer` decides it in training (the
    gradient-free scoring pass over the step's micro-batches, then the step-wide S2T decision).
    """
    model = trainer.model
    inputs = [clone_batch(batch) for batch in micro_batches]
    trainer.current_gradient_accumulation_steps = len(inputs)
    if getattr(trainer, "_scores_whole_steps", False):
        trainer._step_plan = trainer._plan_step(inputs)
    for batch in inputs:
        trainer.training_step(model, batch, batch["num_items_in_batch"])
    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


class ScoringCounter:
    """Counts, per optimizer step of a `STAPOTrainer` with `spurious_stats_scope="step"`, the scoring pass: positions
    through the model (rows x padded length, padding included), model calls and time, and the floor of what it must
    score (the unpadded prompt + completion tokens of the A > 0 completions of the micro-batches that need scoring) and
    the unpadded tokens of all their completions.

    It wraps the trainer's `_plan_step` and counts the calls of the decoder backbone made inside it.
    """

    def __init__(self, trainer):
        from stapo_trl.trainer import _SCORED_AT_STEP, _STAT

        self.steps = []
        self._planning = False
        trainer.model.get_decoder().register_forward_pre_hook(self._count_call, with_kwargs=True)
        plan_step = trainer._plan_step

        def counted_plan_step(step_inputs):
            needed = [
                inputs
                for inputs in step_inputs
                if inputs.get(_SCORED_AT_STEP) is None or int(inputs[_SCORED_AT_STEP][0]) != trainer.state.global_step
            ]
            floor = real = 0
            for inputs in needed:
                loss_tokens = inputs["completion_mask"].sum(dim=1)
                positive = (inputs["advantages"] > 0) & (loss_tokens > 0)
                tokens = inputs["prompt_mask"].sum(dim=1) + loss_tokens
                floor += int(tokens[positive].sum())
                real += int(tokens.sum())
            self.steps.append(
                {
                    "step": trainer.state.global_step + 1,
                    "micro_batches_needing_scoring": len(needed),
                    "scoring_positions": 0,
                    "scoring_calls": 0,
                    "floor_tokens": floor,
                    "real_tokens": real,
                    "rows": sum(inputs["advantages"].numel() for inputs in step_inputs),
                    "positive_rows": sum(int((inputs["advantages"] > 0).sum()) for inputs in step_inputs),
                    "padded_positions": sum(
                        inputs["prompt_ids"].numel() + inputs["completion_ids"].numel() for inputs in step_inputs
                    ),
                }
            )
            synchronize()
            start = time.perf_counter()
            self._planning = True
            try:
                plan = plan_step(step_inputs)
                synchronize()
            finally:
                self._planning = False
            self.steps[-1]["plan_s"] = time.perf_counter() - start
            self.steps[-1]["silenced"] = [decision.silenced.nonzero().tolist() for decision in plan.decisions]
            self.steps[-1]["kept_tokens"] = int(plan.statistics[:, _STAT["kept_tokens"]].sum())
            return plan

        trainer._plan_step = counted_plan_step

    def _count_call(self, module, args, kwargs):
        if self._planning:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.steps[-1]["scoring_positions"] += ids.numel()
            self.steps[-1]["scoring_calls"] += 1


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_python(args: list[str], timeout: float | None = None) -> str:
    """Run `python args...` with this interpreter from the repository root; return stdout (raise on failure)."""
    completed = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return completed.stdout
