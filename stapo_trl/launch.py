"""The launcher behind `stapo-train` and `train.py`, in the order it runs.

`accelerate launch train.py --model Qwen/Qwen3-8B-Base` runs the paper's STAPO recipe on DAPO-Math-17k;
`--method justrl|entropy20|grpo` runs a baseline from the same script, `--config qwen3-8b/stapo` loads a shipped
recipe by name and `--config my_run.yaml` a file (command-line flags win over the recipe, which wins over the method
preset), and `--config demo_cpu` runs the tiny CPU demo.

The stages, each called once, in the order `stapo_trl.cli.main` runs them:

    request.read_request(argv)           the command line and the recipe (`request.read_recipe`, the one reader of
                                         --config) as plain values, before TRL is imported
    request.check_request(request)       every check on those values: one line within a second on a mistake
    parse(request) -> Run                TRL's parser: method preset < recipe < flags; unknown flags and keys named
    check(run) -> Run                    the checks that need the parsed settings: checkpoint, Hub, GPU
    plan(run)                            --dry-run: the settings and batch arithmetic, then stop
    run_training(run)                    the entry of a run (the demo's is `stapo_trl.demo.run_demo`):
        announce(run)                    the resolved settings (printed, and in training_config.yaml), W&B, secrets out
                                         of the recorded command line
        resolve(run) -> Resolved         data (downloaded, then its rows checked), tokenizer, reward, model
        build_trainer(run, resolved)     `STAPOTrainer` and its callbacks
        train(trainer, run)              `trainer.train`, resumed from the checked checkpoint (downloaded if on the Hub)
        publish(trainer, run)            the final model and its card in output_dir, and on the Hub if asked
        report(run, trainer, result)     what the run did, as a dict and one line

Nothing is downloaded or written before `resolve`; `stapo_trl.cli` turns an exception of the stages before it into
one line and exit code 2.
"""

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser, get_peft_config

from . import hub
from .arguments import METHOD_PRESETS, REWARDS, STAPOScriptArguments, model_label
from .config import STAPOConfig, fall_back_to_offline_wandb, hardware_precision
from .hub import hub_preflight
from .request import Request, nearest, recipe_key_line

__all__ = [
    "METHOD_PRESETS", "REWARDS", "ModelArguments", "Run", "Resolved", "parse", "check", "plan", "run_training",
    "announce", "resolve", "build_trainer", "train", "publish", "report",
]  # fmt: skip
# Completions per optimizer update in the paper: 64 prompts x 8 rollouts.
PAPER_COMPLETIONS_PER_UPDATE = 512


# --------------------------------------------------------------------------------------------------------------
# parse
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig`, with `--model` accepted for `--model_name_or_path`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model to train: a Hub id or a local path.", "aliases": ["--model"]},
    )


class UsageError(ValueError):
    """A command-line error found by argparse itself (unknown choice, missing value, malformed number)."""


def _raise_usage_error(message: str):
    raise UsageError(message)


def make_parser(config_class: type[STAPOConfig] = STAPOConfig, prog: str = "stapo-train") -> TrlParser:
    """TRL's parser over the script's, STAPO/TRL's and the model's arguments; its errors raise `UsageError` instead
    of printing the whole usage (hundreds of options)."""
    parser = TrlParser((STAPOScriptArguments, config_class, ModelArguments), prog=prog)
    parser.error = _raise_usage_error
    return parser


@dataclass
class Run:
    """One run's settings as parsed: the script's, the trainer's and the model's arguments, the request they were
    parsed from, and (after `check`) the checkpoint to resume from (None for a fresh start)."""

    script_args: STAPOScriptArguments
    args: STAPOConfig
    model_args: ModelArguments
    request: Request
    checkpoint: str | hub.HubCheckpoint | None = None

    @property
    def label(self) -> str:
        """The model's short name in run names, output folders and W&B tags."""
        return model_label(self.model_args.model_name_or_path, self.script_args.demo)

    @property
    def summary(self) -> str:
        """The resolved settings and the batch arithmetic, then any warning about the world size."""
        return "\n".join([resolved_summary(self), *world_size_warnings(self)])


def parse(request: Request) -> Run:
    """Parse a checked `Request` with TRL's parser: method preset < recipe (`--config`) < command line.

    A dry run is parsed as on the processes the run is sized for (`request.target_world_size`), so that TRL derives
    the batch arithmetic of the real run, and with bf16/fp16 left to those GPUs when this machine has none.
    """
    world_size = request.target_world_size if request.dry_run else request.world_size
    label = model_label(request.model, request.demo)
    if request.demo:
        from .demo import demo_settings

        defaults = demo_settings()
    else:
        defaults = {**paper_recipe(world_size), "output_dir": request.output_dir}
    parser = make_parser(config_for_world_size(world_size) if world_size != request.world_size else STAPOConfig)
    parser.set_defaults(run_name=f"{request.method}-{label}", **{**defaults, **METHOD_PRESETS[request.method]})
    unknown = parser.set_defaults_with_config(**request.recipe)
    if unknown:
        key = unknown[0][2:]
        line = recipe_key_line(request.config, key)
        raise ValueError(f"{request.config}{f' line {line}' if line else ''}: unknown key {key!r}"
                         f"{nearest(key, known_settings(parser))} (stapo-train --help-all lists every setting)")  # fmt: skip
    options = set(parser._option_string_actions)
    for token in request.argv:
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in options:
            raise UsageError(f"unknown option {flag}{nearest(flag, options)} (stapo-train --help-all lists them all)")
    argv = request.argv + [f"--{name}=false" for name in precision_left_to_the_gpus(request)]
    script_args, args, model_args = parser.parse_args_into_dataclasses(args=argv)
    return Run(script_args, args, model_args, request)


def known_settings(parser) -> list[str]:
    """Every setting name the parser takes (the recipe keys it accepts)."""
    return [action.dest for action in parser._actions if action.dest != "help"]


def precision_left_to_the_gpus(request: Request) -> list[str]:
    """bf16/fp16 asked for in a dry run on a machine without a GPU that has it: parsed off here (transformers refuses
    them), shown as the run's precision and noted as not checked."""
    if not request.dry_run or hardware_precision() != "fp32":
        return []
    asked = [name for name in ("bf16", "fp16") if request.explicit.get(name) is True]
    if asked:
        request.notes.append(f"{'/'.join(asked)}: the GPUs of the run must support it (this machine has no CUDA device)")
    return asked


def config_for_world_size(world_size: int) -> type[STAPOConfig]:
    """`STAPOConfig` as TRL derives it on `world_size` processes (`TrainingArguments.world_size` is a property of the
    running processes), for a dry run on a machine that has fewer."""

    class PlannedSTAPOConfig(STAPOConfig):
        @property
        def world_size(self):
            return world_size

    return PlannedSTAPOConfig


# --------------------------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------------------------


def check(run: Run) -> Run:
    """The checks that need the parsed settings (those on plain values ran in `stapo_trl.request.check_request`):
    the checkpoint to resume, the Hub, the GPU; returns `run` with the checkpoint to resume from.

    In a dry run, what this machine cannot check (a GPU for a real model) becomes a note instead.
    """
    from accelerate import PartialState

    args = run.args
    if args.push_to_hub and PartialState().is_main_process:
        hub_preflight(args.hub_model_id, args.hub_token)
    run.checkpoint = resume_checkpoint(args)
    try:
        check_accelerator(run.script_args, args, run.model_args)
    except RuntimeError:
        if not run.request.dry_run:
            raise
        run.request.notes.append(f"a GPU for {run.model_args.model_name_or_path} (this machine has no CUDA device)")
    return run


def plan(run: Run) -> str:
    """What `--dry-run` prints: the resolved settings and batch arithmetic, what this machine could not check, and
    that nothing was downloaded or written."""
    lines = [run.summary]
    lines += [f"not checked here: {note}" for note in run.request.notes]
    lines.append("All checks passed; nothing was downloaded or written (--dry-run).")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# the run: announce -> resolve -> build the trainer -> train -> publish -> report
# --------------------------------------------------------------------------------------------------------------


def run_training(run: Run) -> dict:
    """Train a checked run on its model and dataset; returns `report`'s summary."""
    announce(run)
    resolved = resolve(run)
    trainer = build_trainer(run, resolved)
    result = train(trainer, run)
    publish(trainer, run)
    return report(run, trainer, result)


def announce(run: Run) -> None:
    """Print the resolved settings and write them to `<output_dir>/training_config.yaml` (main process), set up W&B,
    and keep secrets out of the recorded command line."""
    from accelerate import PartialState

    sys.argv[1:] = redact_secrets(sys.argv[1:])
    if PartialState().is_main_process:
        print(run.summary, flush=True)
        os.makedirs(run.args.output_dir, exist_ok=True)
        hub.write_training_config(
            os.path.join(run.args.output_dir, hub.TRAINING_CONFIG_FILE),
            hub.training_config(run.script_args, run.args, run.model_args),
        )
    configure_wandb(run.script_args, run.args, run.label)


@dataclass
class Resolved:
    """What a trainer is built from: the model (Hub id, path or module), its tokenizer, the training prompts, the
    reward functions, the trainer's extra callbacks and the training set's Hub id for the model card (None: local
    data)."""

    model: object
    tokenizer: object
    train_dataset: object
    reward_funcs: object
    dataset_name: str | None
    callbacks: list = field(default_factory=list)


def resolve(run: Run) -> Resolved:
    """The run's data, tokenizer, reward and model: the dataset is downloaded and checked before the tokenizer."""
    from transformers import AutoTokenizer

    from .data import CHECKED_ROWS, check_training_rows, load_raw_dataset, prepare_dataset, resolve_training_spec

    script_args, args, model_args = run.script_args, run.args, run.model_args
    spec = resolve_training_spec(
        script_args.dataset_name,
        path=script_args.dataset_path,
        config=script_args.dataset_config,
        split=script_args.dataset_split,
        question_column=script_args.question_column,
        answer_column=script_args.answer_column,
    )
    raw = load_raw_dataset(spec)
    check_training_rows(list(raw.column_names), raw.select(range(min(CHECKED_ROWS, len(raw)))).to_list(), spec)
    dataset = prepare_dataset(raw, spec)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=args.trust_remote_code
    )
    model_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    # TRL adds `trust_remote_code` (off unless asked) from the training arguments
    args.model_init_kwargs = {key: value for key, value in model_kwargs.items() if value is not None}
    return Resolved(
        model=model_args.model_name_or_path,
        tokenizer=tokenizer,
        train_dataset=fit_prompts(dataset, tokenizer, script_args),
        reward_funcs=reward_function(script_args.reward),
        dataset_name=hub.hub_dataset_id(script_args.dataset_name, script_args.dataset_path),
    )


def fit_prompts(dataset, tokenizer, script_args: STAPOScriptArguments):
    """The first `max_train_samples` prompts, as plain text for a tokenizer without a chat template, without prompts
    over `max_prompt_length` tokens."""
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    if tokenizer.chat_template is None:  # a tokenizer without a chat template gets the plain user message
        dataset = dataset.map(lambda row: {"prompt": row["prompt"][-1]["content"]})

    def short_enough(row):
        prompt = row["prompt"]
        if isinstance(prompt, str):
            length = len(tokenizer(prompt)["input_ids"])
        else:
            length = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
        return length <= script_args.max_prompt_length

    kept = dataset.filter(short_enough)
    if len(kept) < len(dataset):
        print(f"Dropped {len(dataset) - len(kept)} prompts longer than {script_args.max_prompt_length} tokens.")
    if len(kept) == 0:
        raise ValueError(f"No training prompt fits in max_prompt_length={script_args.max_prompt_length} tokens.")
    return kept


def reward_function(name: str):
    from .rewards import accuracy_reward, boxed_reward

    return {"boxed": boxed_reward, "accuracy": accuracy_reward}[name]


def build_trainer(run: Run, resolved: Resolved):
    """`STAPOTrainer` over the resolved model and data, with the in-training benchmark evaluation when asked."""
    from .trainer import STAPOTrainer

    trainer = STAPOTrainer(
        model=resolved.model,
        reward_funcs=resolved.reward_funcs,
        args=run.args,
        train_dataset=resolved.train_dataset,
        processing_class=resolved.tokenizer,
        peft_config=get_peft_config(run.model_args),
        callbacks=resolved.callbacks or None,
    )
    trainer.method = run.script_args.method  # what the model card names
    trainer.dataset_name = resolved.dataset_name
    _add_benchmark_callback(trainer, run.script_args)
    return trainer


def _add_benchmark_callback(trainer, script_args) -> None:
    if script_args.eval_steps_benchmarks <= 0:
        return
    from .eval_callback import BenchmarkEvalCallback

    trainer.add_callback(
        BenchmarkEvalCallback(
            trainer,
            benchmarks=script_args.eval_benchmarks,
            eval_steps=script_args.eval_steps_benchmarks,
            n=script_args.eval_samples,
            max_new_tokens=script_args.eval_max_new_tokens,
            max_problems=script_args.eval_max_problems,
        )
    )


def train(trainer, run: Run):
    """`trainer.train()`, resumed from the checkpoint `check` found (if any; a Hub checkpoint is downloaded and its
    files checked first); returns its `TrainOutput`."""
    checkpoint = run.checkpoint
    if isinstance(checkpoint, hub.HubCheckpoint):
        checkpoint = hub.download_checkpoint(checkpoint, run.args.hub_token)
        check_checkpoint(checkpoint)
    return trainer.train(resume_from_checkpoint=checkpoint)


def publish(trainer, run: Run) -> None:
    """Save the final model and its card to output_dir once and, with `push_to_hub`, upload them once
    (`STAPOTrainer.push_to_hub` saves, writes the card and leaves the run's own records out of the upload)."""
    if run.args.push_to_hub:
        trainer.push_to_hub()
    else:
        trainer.save_model(run.args.output_dir)
        trainer.create_model_card()


def report(run: Run, trainer, result) -> dict:
    """What the run did: optimizer steps and mean training loss, also printed on one line by the main process."""
    summary = {"global_step": result.global_step, "training_loss": result.training_loss}
    if trainer.is_world_process_zero():
        print(f"{result.global_step} optimizer steps, mean training loss {result.training_loss:.4g}; "
              f"model saved in {run.args.output_dir}.")  # fmt: skip
    return summary


# --------------------------------------------------------------------------------------------------------------
# settings and checks used by the stages
# --------------------------------------------------------------------------------------------------------------


def paper_recipe(world_size: int) -> dict:
    """The paper's training settings (docs/method.md, "Training recipe") for `world_size` processes.

    256 prompts x 8 rollouts per generation batch, 64 prompts per optimizer update (4 updates per generation
    batch), one completion per micro-batch, AdamW at a constant 1e-6 after 10 warm-up steps, weight decay 0.1.
    `bf16` is left to `STAPOConfig`, which turns it on where the GPU has it.
    """
    return {
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": max(1, PAPER_COMPLETIONS_PER_UPDATE // world_size),
        "generation_batch_size": 2048,
        "num_generations": 8,
        "learning_rate": 1e-6,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "weight_decay": 0.1,
        "max_grad_norm": 1.0,
        "max_completion_length": 15360,
        "temperature": 1.0,
        "top_p": 1.0,
        "activation_checkpointing": True,
        "logging_steps": 1,
        "save_steps": 200,
        "save_total_limit": 2,
        "spurious_token_log_steps": 20,
        "report_to": ["wandb"],
    }


def redact_secrets(argv: list[str]) -> list[str]:
    """`argv` with the values of `--*_token` flags replaced, so trackers that record the command line (W&B does)
    never see a secret."""
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append("<redacted>")
            hide_next = False
        elif arg.startswith("--") and arg.split("=", 1)[0].replace("-", "_").endswith("_token"):
            hide_next = "=" not in arg
            redacted.append(arg if hide_next else arg.split("=", 1)[0] + "=<redacted>")
        else:
            redacted.append(arg)
    return redacted


def resolved_summary(run: Run) -> str:
    """The settings that decide a run, with the batch arithmetic spelled out (in a dry run, on the processes the run
    is sized for)."""
    script_args, args, model_args, request = run.script_args, run.args, run.model_args, run.request
    world = args.world_size
    precision = next((name for name in ("bf16", "fp16") if getattr(args, name) or request.explicit.get(name) is True),
                     "fp32")  # fmt: skip
    if request.dry_run and precision == "fp32" and not args.use_cpu and "bf16" not in request.explicit:
        precision = "bf16 where the GPUs have it (fp32 on this machine)"  # `hardware_bf16` decides at the launch
    processes = f"{world}" + (f" ({request.target_source}; this machine runs {request.world_size})"
                              if request.dry_run and world != request.world_size else "")  # fmt: skip
    per_step = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    tau_h = (
        f"{args.spurious_entropy_threshold} nats"
        if args.spurious_entropy_threshold is not None
        else f"{args.spurious_entropy_quantile}-quantile of candidates' entropies"
        + (" over each optimizer step" if args.spurious_stats_scope == "step" else " per micro-batch")
    )
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    lines = [
        f"method              {script_args.method}",
        f"model               {'tiny demo model (built locally)' if script_args.demo else model_args.model_name_or_path}",
        f"dataset             {'demo arithmetic' if script_args.demo else dataset_label(script_args)}, reward "
        f"{script_args.reward}",
        f"S2T                 {'on' if args.silence_spurious_tokens else 'off'}: tau_p = {args.spurious_prob_threshold},"
        f" tau_h = {tau_h}",
        f"loss                {args.loss_type}, clip [{1 - args.epsilon:g}, {1 + args.epsilon_high:g}], beta {args.beta},"
        f" top_entropy_quantile {args.top_entropy_quantile}"
        + (" (renormalised)" if args.renormalize_entropy_mask else ""),
        f"optimiser           lr {args.learning_rate:g} ({scheduler}, warm-up {args.warmup_steps}),"
        f" weight decay {args.weight_decay}, grad clip {args.max_grad_norm}",
        f"processes           {processes}, {precision}",
        f"micro-batch         {args.per_device_train_batch_size} completions per device,"
        f" gradient accumulation {args.gradient_accumulation_steps}",
        f"per generation      {args.generation_batch_size // args.num_generations} prompts x {args.num_generations}"
        f" = {args.generation_batch_size} completions = steps_per_generation {args.steps_per_generation}"
        f" x {args.per_device_train_batch_size} per device x {world}",
        f"per optimizer step  {per_step // args.num_generations} prompts = {per_step} completions"
        f" ({args.per_device_train_batch_size} per device x {world} x {args.gradient_accumulation_steps} accumulation)",
        f"updates/generation  {args.steps_per_generation // args.gradient_accumulation_steps}"
        f" (x num_iterations {args.num_iterations})",
        f"max completion      {args.max_completion_length} tokens, temperature {args.temperature}, top-p {args.top_p}",
        f"rollouts            {'vLLM ' + args.vllm_mode if args.use_vllm else 'transformers generate'}",
        f"output_dir          {args.output_dir}",
        f"report_to           {', '.join(args.report_to) or 'none'}",
    ]
    return "\n".join(lines)


def dataset_label(script_args: STAPOScriptArguments) -> str:
    """The training set as the summary names it: name, then what overrides its registered location."""
    overrides = [f"{name} {value!r}" for name, value in (("path", script_args.dataset_path),
                 ("config", script_args.dataset_config), ("split", script_args.dataset_split)) if value]  # fmt: skip
    return script_args.dataset_name + (f" ({', '.join(overrides)})" if overrides else "")


def world_size_warnings(run: Run) -> list[str]:
    """A warning when this launch's processes would give another per-update batch than the processes the run is
    sized for (a recipe's fixed gradient accumulation on fewer GPUs); none when they agree."""
    request, args = run.request, run.args
    target, present = request.target_world_size, request.world_size
    fixed = run.script_args.demo or "gradient_accumulation_steps" in request.explicit

    def per_update(world: int) -> int:
        accumulation = args.gradient_accumulation_steps if fixed else paper_recipe(world)["gradient_accumulation_steps"]
        return args.per_device_train_batch_size * world * accumulation

    if target == present or per_update(target) == per_update(present):
        return []
    sized, here = per_update(target), per_update(present)
    paper = ", the paper's" if sized == PAPER_COMPLETIONS_PER_UPDATE else ""
    accumulation = sized // (args.per_device_train_batch_size * present)
    return [
        f"warning: launched as here ({present} process{'es' if present > 1 else ''}), an update would be {here} "
        f"completions ({here // args.num_generations} prompts), not the {sized} ({sized // args.num_generations} "
        f"prompts{paper}) of {target} processes: launch it on {target} (accelerate launch --num_processes {target}), "
        f"or set gradient_accumulation_steps {accumulation}."
    ]


def check_accelerator(script_args: STAPOScriptArguments, args: STAPOConfig, model_args: ModelArguments) -> None:
    """A real model on a machine without a GPU would download gigabytes and then crawl: say so before that."""
    if script_args.demo or args.use_cpu or args.device.type != "cpu":
        return
    raise RuntimeError(
        f"model_name_or_path={model_args.model_name_or_path!r} needs a GPU and this machine has none (no CUDA device "
        "visible); run the CPU demo instead: stapo-train --config demo_cpu (or pass --use_cpu true to "
        "train this model on the CPU anyway)."
    )


def configure_wandb(script_args: STAPOScriptArguments, args: STAPOConfig, model_label: str) -> None:
    """W&B project, entity, group and tags; offline mode (with a note on syncing) when there is no API key, by the
    same function as the Python API (`STAPOConfig` calls it too)."""
    if "wandb" not in args.report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", script_args.wandb_project or "stapo")
    if script_args.wandb_entity:
        os.environ.setdefault("WANDB_ENTITY", script_args.wandb_entity)
    if script_args.wandb_group:
        os.environ.setdefault("WANDB_RUN_GROUP", script_args.wandb_group)
    os.environ.setdefault("WANDB_TAGS", f"stapo-trl,{script_args.method},{model_label}")
    os.environ.setdefault("WANDB_DIR", args.output_dir)
    fall_back_to_offline_wandb(args.report_to, args.output_dir)


def resume_checkpoint(args: STAPOConfig) -> str | hub.HubCheckpoint | None:
    """The checkpoint to resume from (`true` = the latest of output_dir), checked to be complete and readable; a
    Hub checkpoint (`hf://owner/name[@revision][/folder]`) is checked on the Hub and downloaded by `train`."""
    from transformers.trainer_utils import get_last_checkpoint

    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if hub.is_hub_checkpoint(value):
        return hub.check_hub_checkpoint(value, args.hub_token)
    if str(value).lower() == "true":
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint=true but {args.output_dir!r} has no checkpoint-* folder.")
        value = last
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"resume_from_checkpoint: no checkpoint folder {value!r} (a checkpoint on the Hub is named "
            "hf://owner/name[@revision][/folder])."
        )
    check_checkpoint(value)
    return value


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or unreadable."""


def check_checkpoint(checkpoint: str) -> None:
    """Read the headers of a checkpoint's files (nothing is unpickled) and name the first bad one."""
    folder = Path(checkpoint)
    problems = []
    state_file = folder / "trainer_state.json"
    try:
        json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        problems.append((state_file, error))
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("global_step*")):  # DeepSpeed keeps its states in global_step*/
        problems.append((folder / "model.safetensors", "no model weights (*.safetensors) in the checkpoint"))
    for path in weights:
        try:
            if path.stat().st_size < _safetensors_data_end(path):
                raise ValueError("the file is shorter than its header says")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append((path, error))
    for path in (folder / "optimizer.pt", folder / "scheduler.pt"):
        if path.exists() and not zipfile.is_zipfile(path):
            problems.append((path, "not a complete torch archive"))
    if problems:
        path, error = problems[0]
        step = _checkpoint_step(folder)
        earlier = sorted(
            (p for p in folder.parent.glob("checkpoint-*") if -1 < _checkpoint_step(p) < step), key=_checkpoint_step
        )
        hint = f" Resume from the previous one: --resume_from_checkpoint {earlier[-1]}" if earlier else ""
        raise CorruptCheckpointError(f"checkpoint {folder}: {path.name} is truncated or corrupted ({error}).{hint}")


def _checkpoint_step(folder: Path) -> int:
    suffix = folder.name.rsplit("-", 1)[-1]
    return int(suffix) if suffix.isdigit() else -1


def _safetensors_data_end(path: Path) -> int:
    """The file size a safetensors file must have: 8 + header length + the largest tensor end offset."""
    with open(path, "rb") as file:
        header_length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_length))
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    return 8 + header_length + max(ends, default=0)
