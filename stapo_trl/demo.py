"""The CPU demo: a tiny Qwen3 model learns two-number addition with STAPO, in minutes, on two cores.

Everything is built locally, nothing is downloaded:

- a synthetic task, "What is a+b?" answered as `\\boxed{c}`, with held-out pairs that never appear in training;
- a character-level tokenizer (`\\boxed{` is one token) and a ~1M-parameter Qwen3-architecture model;
- a short supervised warm start, stopped as soon as held-out greedy accuracy reaches a target, so that RL starts
  from a policy that is sometimes right (a group of 8 all-wrong completions carries no signal);
- the settings of the RL run that follows (`demo_settings`), measured on a 2-core CPU machine.

`stapo-train --config demo_cpu` (or `python train.py ...`) runs `run_demo`, the demo's entry: the
launcher's stages (`stapo_trl.launch`) with the demo's own data and model. `prepare_demo` builds and warm-starts
them, `STAPOTrainer` trains with the settings of `demo_settings`, `DemoMetricsCallback` records the logs, one progress
bar shows the run (`use_demo_progress_bar`) and `finish_demo` ends it: held-out accuracy, `summary.json` and the
plots.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, TrainerCallback

from .rewards import extract_boxed_answer
from .tiny import BOXED_TOKEN, build_char_tokenizer, build_tiny_qwen3

# Model size of the demo (see docs/design.md, "The CPU demo").
DEMO_MODEL_KWARGS = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=512,
    max_position_embeddings=64,
)
# The longest completion is `\boxed{198}<eos>`: 6 tokens. RL and evaluation leave 2 tokens of slack.
MAX_COMPLETION_LENGTH = 8


# --------------------------------------------------------------------------------------------------------------
# Task
# --------------------------------------------------------------------------------------------------------------


def format_question(a: int, b: int) -> str:
    """The prompt of one problem: a plain string (the demo tokenizer has no chat template)."""
    return f"What is {a}+{b}?"


def format_completion(answer: int | str) -> str:
    """The target completion of one problem, without the end-of-sequence token."""
    return f"{BOXED_TOKEN}{answer}}}"


def _all_pairs(max_operand: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]


def _problem(a: int, b: int) -> dict[str, str]:
    return {"question": format_question(a, b), "answer": str(a + b)}


def arithmetic_problems(num: int, seed: int = 0, max_operand: int = 99) -> list[dict[str, str]]:
    """`num` distinct addition problems `{"question": "What is a+b?", "answer": "a+b"}` with 0 <= a, b <= max_operand.

    The problems are a seeded random sample without replacement of the (max_operand + 1)^2 ordered pairs.
    """
    pairs = _all_pairs(max_operand)
    if not 0 <= num <= len(pairs):
        raise ValueError(f"num must be in [0, {len(pairs)}] for max_operand={max_operand}, got {num}.")
    random.Random(seed).shuffle(pairs)
    return [_problem(a, b) for a, b in pairs[:num]]


def split_problems(
    seed: int = 0, num_train: int | None = None, num_eval: int = 500, max_operand: int = 99
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Disjoint train / held-out problem lists.

    The held-out set is `num_eval` ordered pairs (a, b); training excludes both (a, b) and (b, a) of every held-out
    pair, so held-out accuracy cannot come from remembering a pair or its mirror image. `num_train=None` keeps every
    remaining pair (about 9,000 for max_operand=99), in a seeded random order.
    """
    rng = random.Random(seed)
    pairs = _all_pairs(max_operand)
    rng.shuffle(pairs)
    if not 0 < num_eval < len(pairs):
        raise ValueError(f"num_eval must be in (0, {len(pairs)}), got {num_eval}.")
    eval_pairs = pairs[:num_eval]
    held_out = {frozenset(pair) for pair in eval_pairs}
    train_pairs = [pair for pair in pairs[num_eval:] if frozenset(pair) not in held_out]
    if num_train is not None:
        if num_train > len(train_pairs):
            raise ValueError(f"num_train={num_train} exceeds the {len(train_pairs)} pairs left after the held-out split.")
        train_pairs = train_pairs[:num_train]
    return [_problem(a, b) for a, b in train_pairs], [_problem(a, b) for a, b in eval_pairs]


def make_demo_datasets(
    seed: int = 0, num_train: int | None = None, num_eval: int = 500, max_operand: int = 99
) -> tuple[Dataset, Dataset]:
    """`(train_ds, eval_ds)` as `datasets.Dataset` with a plain-string `prompt` column and an `answer` column.

    See `split_problems` for how the splits are kept disjoint.
    """
    train, held_out = split_problems(seed=seed, num_train=num_train, num_eval=num_eval, max_operand=max_operand)

    def to_dataset(problems):
        return Dataset.from_dict(
            {"prompt": [p["question"] for p in problems], "answer": [p["answer"] for p in problems]}
        )

    return to_dataset(train), to_dataset(held_out)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------------------------


def demo_corpus(max_operand: int = 99) -> list[str]:
    """Every piece of text the task can produce: digits, the question words, `+`, `?`, `\\boxed{` and `}`."""
    digits = "".join(str(d) for d in range(10))
    return [format_question(max_operand, max_operand), digits, format_completion(digits)]


def build_demo_tokenizer(max_operand: int = 99):
    """The character-level tokenizer of the demo (left padding, `<pad>` and `<eos>`, `\\boxed{` as one token)."""
    return build_char_tokenizer(demo_corpus(max_operand))


def build_demo_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0):
    """A randomly initialised ~1M-parameter Qwen3-architecture model for `tokenizer` (float32)."""
    return build_tiny_qwen3(tokenizer, seed=seed, **DEMO_MODEL_KWARGS)


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


def _is_correct(completion: str, answer: str) -> bool:
    # The project's extractor, so that evaluation and the RL reward read a completion the same way; comparing the
    # boxed integer exactly is enough here (and much faster than math-verify) since every answer is an integer.
    extracted = extract_boxed_answer(completion)
    if extracted is None:
        return False
    try:
        return int(extracted.strip()) == int(answer)
    except ValueError:
        return False


@torch.no_grad()
def generate_completions(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    batch_size: int = 512,
    do_sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_COMPLETION_LENGTH,
) -> list[str]:
    """Complete `prompts` in left-padded batches and decode the completions (special tokens removed)."""
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            generation_kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            if do_sample:
                generation_kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                generation_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            output = model.generate(**batch, **generation_kwargs)
            completion_ids = output[:, batch["input_ids"].shape[1] :]
            completions.extend(tokenizer.batch_decode(completion_ids, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return completions


def greedy_accuracy(
    model, tokenizer: PreTrainedTokenizerBase, eval_ds, batch_size: int = 512, limit: int | None = None
) -> float:
    """Fraction of `eval_ds` (columns `prompt`, `answer`) whose greedy completion boxes the right integer."""
    prompts, answers = _columns(eval_ds, limit)
    completions = generate_completions(model, tokenizer, prompts, batch_size=batch_size)
    return sum(_is_correct(c, a) for c, a in zip(completions, answers)) / max(len(answers), 1)


def sampled_accuracy(
    model,
    tokenizer: PreTrainedTokenizerBase,
    eval_ds,
    temperature: float = 1.0,
    batch_size: int = 512,
    seed: int = 0,
    limit: int | None = None,
) -> float:
    """Like `greedy_accuracy` with one sampled completion per problem at `temperature` (top-p 1)."""
    prompts, answers = _columns(eval_ds, limit)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        completions = generate_completions(
            model, tokenizer, prompts, batch_size=batch_size, do_sample=True, temperature=temperature
        )
    return sum(_is_correct(c, a) for c, a in zip(completions, answers)) / max(len(answers), 1)


def _columns(ds, limit: int | None) -> tuple[list[str], list[str]]:
    if isinstance(ds, Dataset):
        prompts, answers = list(ds["prompt"]), list(ds["answer"])
    else:
        prompts, answers = [row["prompt"] for row in ds], [row["answer"] for row in ds]
    if limit is not None:
        prompts, answers = prompts[:limit], answers[:limit]
    return prompts, answers


# --------------------------------------------------------------------------------------------------------------
# Supervised warm start
# --------------------------------------------------------------------------------------------------------------


def _supervised_tensors(tokenizer: PreTrainedTokenizerBase, ds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded `prompt + completion + <eos>` ids, attention mask and labels (-100 outside the completion)."""
    prompts, answers = _columns(ds, None)
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([format_completion(a) for a in answers], add_special_tokens=False)["input_ids"]
    rows = [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids)]
    length = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (prompt_ids, completion_ids) in enumerate(rows):
        ids = prompt_ids + completion_ids
        input_ids[i, length - len(ids) :] = torch.tensor(ids)
        attention_mask[i, length - len(ids) :] = 1
        labels[i, length - len(completion_ids) :] = torch.tensor(completion_ids)
    return input_ids, attention_mask, labels


def warm_start(
    model,
    tokenizer: PreTrainedTokenizerBase,
    train_ds,
    eval_ds=None,
    target_accuracy: float | None = 0.25,
    max_steps: int = 1500,
    lr: float = 1e-3,
    batch_size: int = 64,
    eval_every: int = 25,
    eval_limit: int | None = 250,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Supervised fine-tuning on `prompt + "\\boxed{answer}<eos>"`, with the loss on the completion only.

    Stops as soon as the greedy accuracy on the first `eval_limit` problems of `eval_ds` (checked every
    `eval_every` steps) reaches `target_accuracy`, or after `max_steps`. A fixed step count is fragile on this task:
    accuracy sits near 10% for hundreds of steps and then jumps, at a step that depends on the seed.
    With `target_accuracy=None` or no `eval_ds`, trains for `max_steps`.

    Returns `{"steps", "loss", "first_loss", "accuracy", "seconds", "reached_target"}` (`accuracy` is the last check,
    `None` when there was none).
    """
    start = time.perf_counter()
    input_ids, attention_mask, labels = _supervised_tensors(tokenizer, train_ds)
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    check = eval_ds is not None and target_accuracy is not None and eval_every > 0
    model.train()
    losses: list[float] = []
    accuracy = None
    reached = False
    step = 0
    # The bar is replaced by one line when the warm start ends, so the console keeps one bar: the RL run's.
    bar = tqdm(total=max_steps, desc="warm start", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        while step < max_steps:
            index = torch.randint(0, input_ids.shape[0], (batch_size,), generator=generator)
            mask = attention_mask[index]
            keep = int(mask.sum(dim=0).nonzero()[0])  # drop columns that are padding in the whole batch
            loss = model(
                input_ids=input_ids[index, keep:].to(device),
                attention_mask=mask[:, keep:].to(device),
                labels=labels[index, keep:].to(device),
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if check and step % eval_every == 0:
                accuracy = greedy_accuracy(model, tokenizer, eval_ds, limit=eval_limit)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{accuracy:.2f}")
                if accuracy >= target_accuracy:
                    reached = True
                    break
            elif step % 10 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
    if progress and check:
        if reached:
            print(f"Warm start reached its target: {accuracy:.1%} held-out greedy accuracy >= {target_accuracy:.0%} after "
                  f"{step} steps; starting RL.")  # fmt: skip
        else:
            print(f"Warm start stopped at max_steps={max_steps} below its target ({target_accuracy:.0%}); starting RL.")
    optimizer.zero_grad(set_to_none=True)
    return {
        "steps": step,
        "first_loss": losses[0] if losses else None,
        "loss": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "accuracy": accuracy,
        "reached_target": reached,
        "seconds": round(time.perf_counter() - start, 2),
    }


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_metrics_csv(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write `records` as CSV, one column per key seen in any record (first-seen order), blanks where missing."""
    columns: list[str] = []
    for record in records:
        columns.extend(key for key in record if key not in columns)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})


class DemoMetricsCallback(TrainerCallback):
    """Append every training log (`reward`, `entropy`, `stapo/masked_frac`, ...) to `<output_dir>/metrics.jsonl`.

    Each record carries `step` (the optimizer step of the log) and `epoch`; at the end of training, the records
    are also written to `<output_dir>/metrics.csv`. `output_dir=None` uses the trainer's `args.output_dir`.
    Only the main process writes. The file is truncated when training begins, so a rerun does not mix runs.
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, filename: str = "metrics.jsonl"):
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.filename = filename
        self.records: list[dict[str, Any]] = []

    def _dir(self, args) -> str:
        return self.output_dir if self.output_dir is not None else args.output_dir

    @property
    def jsonl_path(self) -> str | None:
        return None if self.output_dir is None else os.path.join(self.output_dir, self.filename)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.output_dir = self._dir(args)
        os.makedirs(self.output_dir, exist_ok=True)
        self.records = []
        open(os.path.join(self.output_dir, self.filename), "w").close()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": _jsonable(state.epoch)}
        record.update({key: _jsonable(value) for key, value in logs.items()})
        self.records.append(record)
        output_dir = self._dir(args)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, self.filename), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        output_dir = self._dir(args)
        os.makedirs(output_dir, exist_ok=True)
        stem = os.path.splitext(self.filename)[0]
        write_metrics_csv(self.records, os.path.join(output_dir, f"{stem}.csv"))


class DemoProgressCallback(TrainerCallback):
    """One tqdm bar over the optimizer steps with the latest reward, entropy and silenced fraction as its postfix.

    Transformers' own `ProgressCallback` (or `PrinterCallback` with `disable_tqdm`) prints every log dict, about
    forty metrics per step; for a short run logged every step that buries the bar. `use_demo_progress_bar`
    swaps them for this callback. `postfix` maps logged keys to short labels.
    """

    DEFAULT_POSTFIX = {"reward": "reward", "entropy": "entropy", "stapo/masked_frac": "silenced"}

    def __init__(self, postfix: dict[str, str] | None = None, desc: str = "RL"):
        self.postfix = dict(self.DEFAULT_POSTFIX if postfix is None else postfix)
        self.desc = desc
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.desc, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        shown = {label: logs[key] for key, label in self.postfix.items() if isinstance(logs.get(key), (int, float))}
        if shown:
            self.bar.set_postfix({label: f"{value:.3g}" for label, value in shown.items()}, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_demo_progress_bar(trainer, postfix: dict[str, str] | None = None, desc: str = "RL") -> DemoProgressCallback:
    """Replace the trainer's log-printing progress callbacks by a `DemoProgressCallback`; returns it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(callback)
    try:  # Jupyter's progress callback, when transformers picked it
        from transformers.utils.notebook import NotebookProgressCallback

        trainer.remove_callback(NotebookProgressCallback)
    except ImportError:
        pass
    callback = DemoProgressCallback(postfix=postfix, desc=desc)
    trainer.add_callback(callback)
    return callback


# --------------------------------------------------------------------------------------------------------------
# Measured settings and the entry point of train.py
# --------------------------------------------------------------------------------------------------------------

# The supervised warm start of the demo (see `warm_start`); measured values, see `demo_settings`.
DEMO_WARM_START: dict[str, Any] = dict(
    target_accuracy=0.25,
    max_steps=1500,
    lr=1e-3,
    batch_size=64,
    eval_every=25,
    eval_limit=250,
)
DEMO_NUM_EVAL = 500


def demo_num_threads(cores: int | None = None, load: float | None = None) -> int:
    """The torch threads the demo uses: `OMP_NUM_THREADS` when set, else the cores the 1-minute load average
    leaves idle (at least 1).

    A thread that waits for a core another process holds stalls the others at every operation: on a shared 2-core
    machine at load average 4.6-6.0, 60 warm-start steps took 38-42 s with one thread and 359 s with two
    (`warm_start(..., max_steps=60)` after `torch.set_num_threads(n)`). On an idle machine both cores are used.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, round(cores - load)))


def set_up_demo_process() -> None:
    """The demo's process: `demo_num_threads` torch threads, DeepSpeed told it runs on the CPU (instead of warning
    that it found no GPU, when the dev extra installed it), and no progress bar for transformers' own loading and
    saving, so that the console shows the RL run's bar, the warm start's line and the summary."""
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(demo_num_threads())
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    transformers_logging.disable_progress_bar()
    # TRL 1.16 reads `model.is_gradient_checkpointing` before every generation (trl.models.utils,
    # `_unwrap_model_for_generation`), a name transformers 5.25 deprecates; the demo does not checkpoint at all.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def demo_settings(**overrides: Any) -> dict[str, Any]:
    """`STAPOConfig` field values of the demo's RL run: `STAPOConfig(**demo_settings(output_dir=...))`.

    Measured on a 2-core CPU machine (see docs/design.md, "The CPU demo"): 16 prompts x 8
    completions per step in one micro-batch, DAPO loss without KL, 0/1 accuracy reward, temperature 1.0, learning
    rate 1e-4 decaying linearly to 0. `overrides` replace or add fields; an unknown field raises `TypeError`.
    """
    from .arguments import DEMO_OUTPUT_DIR
    from .config import STAPOConfig

    settings: dict[str, Any] = dict(
        output_dir=DEMO_OUTPUT_DIR,
        use_cpu=True,
        bf16=False,
        report_to=[],
        seed=0,
        # STAPO objective (the paper's): DAPO token-mean loss, clip-higher, no KL.
        loss_type="dapo",
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        max_grad_norm=1.0,
        # Rollouts: 16 prompts x 8 completions per optimizer step, one update per rollout batch.
        num_generations=8,
        per_device_train_batch_size=128,
        gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION_LENGTH,
        temperature=1.0,
        top_p=1.0,
        # Optimisation.
        learning_rate=1e-4,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_steps=150,
        # S2T with tau_p = 0.2, not the paper's 0.002: on 4096 sampled completions of the warm-started demo model only
        # 2 of 22,504 tokens were positive-advantage tokens with p < 0.002, and a lone candidate in a micro-batch is
        # never below its own 0.75-quantile, so nothing would ever be silenced. At 0.2 the demo run silenced 0.064%
        # of completion tokens (67 tokens, in 39 of 150 steps; README, "The CPU demo"): rare, and visible.
        silence_spurious_tokens=True,
        spurious_prob_threshold=0.2,
        spurious_entropy_quantile=0.75,
        spurious_token_log_steps=10,
        # A ~1M-parameter model needs no activation checkpointing: TRL's default (on) would only cost time, and TRL
        # 1.16 toggles it around generation through names transformers 5.25 deprecates (a FutureWarning each).
        activation_checkpointing=False,
        # Logging: every step, no checkpoints (the demo saves the final model itself if it wants to).
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=False,
    )
    unknown = set(overrides) - {f for f in STAPOConfig.__dataclass_fields__}
    if unknown:
        raise TypeError(f"Unknown STAPOConfig field(s) in demo_settings overrides: {', '.join(sorted(unknown))}.")
    settings.update(overrides)
    return settings


def evaluate_demo(model, tokenizer: PreTrainedTokenizerBase, eval_ds, seed: int = 0) -> dict[str, float]:
    """Held-out accuracy: `{"greedy": ..., "sampled": ...}` (one sample per problem at temperature 1.0).

    Greedy accuracy is the headline number; sampled accuracy at the training temperature lags behind it.
    """
    return {
        "greedy": greedy_accuracy(model, tokenizer, eval_ds),
        "sampled": sampled_accuracy(model, tokenizer, eval_ds, temperature=1.0, seed=seed),
    }


def prepare_demo(
    output_dir: str | os.PathLike = "outputs/demo",
    seed: int = 0,
    num_eval: int = DEMO_NUM_EVAL,
    target_accuracy: float | None = DEMO_WARM_START["target_accuracy"],
    warm_start_max_steps: int = DEMO_WARM_START["max_steps"],
    warm_start_lr: float = DEMO_WARM_START["lr"],
    progress: bool = True,
):
    """Build everything the demo's RL run needs: `(model, tokenizer, train_ds, eval_ds, info)`.

    Builds the tokenizer, the model (seeded) and the disjoint splits, warm-starts the model (see `warm_start`) and
    measures its held-out accuracy, the "before" of the RL run. `info` holds `warm_start` (what `warm_start`
    returned), `accuracy_before_rl` (`evaluate_demo`), the sizes of the splits and the model, and `seconds`;
    it is also written to `<output_dir>/warm_start.json`.
    """
    from transformers import set_seed

    start = time.perf_counter()
    set_seed(seed)
    tokenizer = build_demo_tokenizer()
    model = build_demo_model(tokenizer, seed=seed)
    train_ds, eval_ds = make_demo_datasets(seed=seed, num_eval=num_eval)
    settings = dict(DEMO_WARM_START, max_steps=warm_start_max_steps, lr=warm_start_lr, target_accuracy=target_accuracy)
    info: dict[str, Any] = {
        "seed": seed,
        "num_train": len(train_ds),
        "num_eval": len(eval_ds),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "warm_start_settings": settings,
    }
    info["warm_start"] = warm_start(model, tokenizer, train_ds, eval_ds, seed=seed, progress=progress, **settings)
    info["accuracy_before_rl"] = evaluate_demo(model, tokenizer, eval_ds, seed=seed)
    info["seconds"] = round(time.perf_counter() - start, 2)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "warm_start.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return model, tokenizer, train_ds, eval_ds, info


def finish_demo(
    model,
    tokenizer: PreTrainedTokenizerBase,
    eval_ds,
    info: dict[str, Any],
    output_dir: str | os.PathLike = "outputs/demo",
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """After the RL run: held-out accuracy, `summary.json` and the plots, in `output_dir`.

    Evaluates `model` (`evaluate_demo`), writes `<output_dir>/summary.json` (`accuracy_before_rl` from `info`,
    `accuracy_after_rl`, the warm start, `extra`), draws `accuracy_before_after.png` (greedy and sampled held-out
    accuracy before and after RL), `training_curves.png` (reward, entropy, silenced fraction) and one PNG per metric
    from `<output_dir>/metrics.jsonl` when it exists, and returns the summary (with `plots`, the paths written).
    `format_demo_summary` turns it into a line for the console.
    """
    from .plots import EXTENDED_KEYS, plot_accuracy_before_after, plot_each_metric, plot_runs, plot_training_curves

    output_dir = os.fspath(output_dir)
    summary: dict[str, Any] = {
        "seed": seed,
        "accuracy_before_rl": info.get("accuracy_before_rl"),
        "accuracy_after_rl": evaluate_demo(model, tokenizer, eval_ds, seed=seed),
        "num_eval": len(eval_ds),
        "warm_start": info.get("warm_start"),
        **(extra or {}),
    }
    metrics_path = os.path.join(output_dir, "metrics.jsonl")
    plots: list[str] = []
    if summary["accuracy_before_rl"]:
        accuracy_plot = os.path.join(output_dir, "accuracy_before_after.png")
        title = f"CPU demo: {len(eval_ds)} held-out problems"
        plot_accuracy_before_after(summary["accuracy_before_rl"], summary["accuracy_after_rl"], accuracy_plot, title)
        plots.append(accuracy_plot)
    if os.path.exists(metrics_path) and read_metrics(metrics_path):
        curves = os.path.join(output_dir, "training_curves.png")
        plot_training_curves(metrics_path, curves, title="STAPO on the CPU demo")
        details = os.path.join(output_dir, "training_details.png")
        plot_runs({"run": metrics_path}, keys=EXTENDED_KEYS, output_path=details)
        plots += [curves, details, *plot_each_metric(metrics_path, output_dir)]
    summary["plots"] = plots
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def format_demo_summary(summary: dict[str, Any]) -> str:
    """`held-out accuracy (greedy): 27.8% -> 71.4%  (sampled at T=1: 18.2% -> 48.8%)`."""
    before = summary.get("accuracy_before_rl") or {}
    after = summary.get("accuracy_after_rl") or {}

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    return (
        f"held-out accuracy (greedy): {pct(before.get('greedy'))} -> {pct(after.get('greedy'))}  "
        f"(sampled at T=1: {pct(before.get('sampled'))} -> {pct(after.get('sampled'))}; "
        f"{summary.get('num_eval', '?')} problems never seen in training)"
    )


# --------------------------------------------------------------------------------------------------------------
# The demo's entry: the launcher's stages with the demo's data and model
# --------------------------------------------------------------------------------------------------------------


def run_demo(run) -> dict[str, Any]:
    """Train a checked demo run (`stapo_trl.launch.Run`); returns `finish_demo`'s summary.

    The launcher's stages in the launcher's order; only `resolve` is the demo's own (`prepare_demo`: the tiny
    model, its tokenizer and the arithmetic problems, warm-started), and the report adds the held-out accuracy.
    """
    from . import launch

    started = time.perf_counter()
    set_up_demo_process()
    launch.announce(run)
    model, tokenizer, train_dataset, eval_dataset, info = prepare_demo(
        run.args.output_dir,
        seed=run.args.seed,
        target_accuracy=run.script_args.demo_target_accuracy,
        warm_start_max_steps=run.script_args.demo_warm_start_steps,
    )
    resolved = launch.Resolved(
        model=model,
        tokenizer=tokenizer,
        train_dataset=train_dataset,
        reward_funcs=launch.reward_function(run.script_args.reward),
        dataset_name=None,
        callbacks=[DemoMetricsCallback()],
    )
    trainer = launch.build_trainer(run, resolved)
    use_demo_progress_bar(trainer)  # one bar with reward, entropy and silenced share, not a dict per step
    launch.train(trainer, run)
    launch.publish(trainer, run)
    summary = finish_demo(
        trainer.model,
        tokenizer,
        eval_dataset,
        info,
        run.args.output_dir,
        seed=run.args.seed,
        extra={"rl_steps": trainer.state.global_step, "seconds": round(time.perf_counter() - started, 1)},
    )
    print(f"{format_demo_summary(summary)}. {summary['rl_steps']} STAPO steps, {summary['seconds']} s in all.")
    return summary
