"""The launcher behind `train.py`: parse a recipe and the command line, check everything, then train.

`accelerate launch train.py --model Qwen/Qwen3-8B-Base` runs the paper's STAPO recipe on DAPO-Math-17k;
`--method justrl|entropy20|grpo` runs a baseline from the same script, `--config recipes/....yaml` loads a recipe
(command-line flags win over the recipe, which wins over the method preset), and `--config recipes/demo_cpu.yaml`
runs the tiny CPU demo.
"""

import argparse
import json
import netrc
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from trl import ModelConfig, TrlParser, get_peft_config

from .config import STAPOConfig
from .data import BENCHMARKS, DEFAULT_TRAINING_DATASET, resolve_training_spec

METHOD_PRESETS = {
    # STAPO = the JustRL recipe + S2T (the STAPOConfig defaults carry the paper's thresholds).
    "stapo": {"silence_spurious_tokens": True},
    "justrl": {"silence_spurious_tokens": False},
    # "Beyond the 80/20 rule": gradient only on the 20% highest-entropy tokens, renormalised over them as the
    # original code does.
    "entropy20": {"silence_spurious_tokens": False, "top_entropy_quantile": 0.2, "renormalize_entropy_mask": True},
    # DeepSeekMath's GRPO: per-sequence mean, symmetric clip, KL to the reference model.
    "grpo": {"silence_spurious_tokens": False, "loss_type": "grpo", "epsilon": 0.2, "epsilon_high": 0.2, "beta": 0.04},
}
REWARDS = ("boxed", "accuracy")
# Completions per optimizer update in the paper: 64 prompts x 8 rollouts.
PAPER_COMPLETIONS_PER_UPDATE = 512


def paper_recipe(world_size: int) -> dict:
    """The paper's training settings (PAPER.md, "Training recipe") for `world_size` processes.

    256 prompts x 8 rollouts per generation batch, 64 prompts per optimizer update (4 updates per generation
    batch), one completion per micro-batch, AdamW at a constant 1e-6 after 10 warm-up steps, weight decay 0.1.
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
        # bf16 where the accelerator has it; elsewhere fp32, so that the launcher also parses on a CPU machine
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": True,
        "logging_steps": 1,
        "save_steps": 200,
        "save_total_limit": 2,
        "spurious_token_log_steps": 20,
        "report_to": ["wandb"],
    }


@dataclass
class ScriptArguments:
    """Arguments of `train.py` that are not training or model settings."""

    method: str = field(
        default="stapo",
        metadata={"help": f"Method preset: {', '.join(METHOD_PRESETS)}. Explicit flags override the preset."},
    )
    dataset_name: str = field(
        default=DEFAULT_TRAINING_DATASET,
        metadata={"help": "Training set: a registry name (see stapo_trl/data.py), a Hub id or a local path."},
    )
    dataset_path: str | None = field(
        default=None, metadata={"help": "Load the registered dataset from this Hub id or local file/folder instead."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration (subset) override."})
    dataset_split: str | None = field(default=None, metadata={"help": "Dataset split override."})
    question_column: str | None = field(default=None, metadata={"help": "Question column override."})
    answer_column: str | None = field(default=None, metadata={"help": "Reference answer column override."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    max_prompt_length: int = field(
        default=1024, metadata={"help": "Prompts longer than this many tokens (chat template applied) are dropped."}
    )
    reward: str = field(
        default="boxed",
        metadata={"help": "Reward: 'boxed' (+1 correct / -1 wrong, the paper's) or 'accuracy' (1 / 0)."},
    )
    demo: bool = field(
        default=False,
        metadata={"help": "Run the CPU demo: a tiny local model learns addition (see recipes/demo_cpu.yaml)."},
    )
    demo_warm_start_steps: int = field(
        default=1500, metadata={"help": "Demo: most supervised warm-start steps (it stops earlier at the target)."}
    )
    demo_target_accuracy: float = field(
        default=0.25, metadata={"help": "Demo: held-out greedy accuracy at which the warm start stops."}
    )
    wandb_project: str | None = field(default=None, metadata={"help": "W&B project (default: 'stapo')."})
    wandb_entity: str | None = field(default=None, metadata={"help": "W&B entity (user or team)."})
    wandb_group: str | None = field(default=None, metadata={"help": "W&B run group."})
    eval_benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": f"Benchmarks to evaluate during training, among {', '.join(BENCHMARKS)}."},
    )
    eval_steps_benchmarks: int = field(
        default=0, metadata={"help": "Evaluate `eval_benchmarks` every this many optimizer steps (0: never)."}
    )
    eval_samples: int = field(default=4, metadata={"help": "Samples per problem for the in-training evaluation."})
    eval_max_new_tokens: int = field(default=2048, metadata={"help": "Generation budget of in-training evaluation."})
    eval_max_problems: int | None = field(default=64, metadata={"help": "Problems per benchmark in training evals."})

    def __post_init__(self):
        if self.method not in METHOD_PRESETS:
            raise ValueError(f"method must be one of {', '.join(METHOD_PRESETS)}, got {self.method!r}.")
        if self.reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}.")
        if self.max_prompt_length <= 0:
            raise ValueError(f"max_prompt_length must be a positive number of tokens, got {self.max_prompt_length}.")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"max_train_samples must be positive or unset, got {self.max_train_samples}.")
        unknown = [name for name in self.eval_benchmarks if name not in BENCHMARKS]
        if unknown:
            raise ValueError(f"eval_benchmarks: unknown {unknown}; accepted: {', '.join(BENCHMARKS)}.")
        if self.eval_steps_benchmarks < 0:
            raise ValueError(f"eval_steps_benchmarks must be >= 0, got {self.eval_steps_benchmarks}.")
        if self.demo_warm_start_steps < 0:
            raise ValueError(f"demo_warm_start_steps must be >= 0, got {self.demo_warm_start_steps}.")
        if not 0.0 <= self.demo_target_accuracy <= 1.0:
            raise ValueError(f"demo_target_accuracy must be in [0, 1], got {self.demo_target_accuracy}.")
        if self.eval_steps_benchmarks > 0 and not self.eval_benchmarks:
            raise ValueError("eval_steps_benchmarks is set but eval_benchmarks is empty: name the benchmarks.")


@dataclass
class ModelArguments(ModelConfig):
    """TRL's `ModelConfig`, with `--model` accepted for `--model_name_or_path`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model to train: a Hub id or a local path.", "aliases": ["--model"]},
    )


def _peek(argv: list[str]) -> tuple[str, bool, str | None]:
    """Method, demo flag and model, from the command line or the recipe, before the full parse sets defaults."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--config")
    peek.add_argument("--method")
    peek.add_argument("--demo", nargs="?", const="true")
    peek.add_argument("--model", "--model_name_or_path", "--model-name-or-path", dest="model")
    known, _ = peek.parse_known_args(argv)
    recipe = {}
    if known.config:
        if not Path(known.config).is_file():
            raise FileNotFoundError(f"--config: no such recipe file {known.config!r}.")
        recipe = yaml.safe_load(Path(known.config).read_text()) or {}
    method = known.method or recipe.get("method", "stapo")
    demo = str(known.demo if known.demo is not None else recipe.get("demo", False)).lower() in ("true", "1", "yes")
    model = known.model or recipe.get("model_name_or_path")
    return method, demo, model


def model_label(model_name_or_path: str | None, demo: bool) -> str:
    return "tiny-demo" if demo else str(model_name_or_path).rstrip("/").split("/")[-1]


def parse_args(argv: list[str] | None = None):
    """Parse `train.py`'s arguments: method preset < recipe YAML < command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    method, demo, model = _peek(argv)
    if method not in METHOD_PRESETS:
        raise ValueError(f"method must be one of {', '.join(METHOD_PRESETS)}, got {method!r}.")
    if not demo and not model:
        raise ValueError("model_name_or_path (or --model) is required, e.g. --model Qwen/Qwen3-8B-Base.")
    label = model_label(model, demo)
    parser = TrlParser((ScriptArguments, STAPOConfig, ModelArguments))
    if demo:
        from .demo import demo_settings

        defaults = demo_settings()
    else:
        defaults = paper_recipe(int(os.environ.get("WORLD_SIZE", "1")))
        defaults["output_dir"] = os.path.join("outputs", label, method)
    parser.set_defaults(run_name=f"{method}-{label}", **{**defaults, **METHOD_PRESETS[method]})
    return parser.parse_args_and_config(args=argv)


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


def resolved_summary(script_args: ScriptArguments, args: STAPOConfig, model_args: ModelArguments) -> str:
    """The settings that decide a run, with the batch arithmetic spelled out."""
    world = args.world_size
    per_step = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    tau_h = (
        f"{args.spurious_entropy_threshold} nats"
        if args.spurious_entropy_threshold is not None
        else f"{args.spurious_entropy_quantile}-quantile of candidates' entropies"
    )
    lines = [
        f"method              {script_args.method}",
        f"model               {'tiny demo model (built locally)' if script_args.demo else model_args.model_name_or_path}",
        f"dataset             {'demo arithmetic' if script_args.demo else script_args.dataset_name}",
        f"S2T                 {'on' if args.silence_spurious_tokens else 'off'}: tau_p = {args.spurious_prob_threshold},"
        f" tau_h = {tau_h}",
        f"loss                {args.loss_type}, clip [{1 - args.epsilon:g}, {1 + args.epsilon_high:g}], beta {args.beta},"
        f" top_entropy_quantile {args.top_entropy_quantile}"
        + (" (renormalised)" if args.renormalize_entropy_mask else ""),
        f"optimiser           lr {args.learning_rate:g} ({args.lr_scheduler_type}, warm-up {args.warmup_steps}),"
        f" weight decay {args.weight_decay}, grad clip {args.max_grad_norm}",
        f"processes           {world}",
        f"per generation      {args.generation_batch_size // args.num_generations} prompts x {args.num_generations}"
        f" = {args.generation_batch_size} completions",
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


def check_output_dir(output_dir: str) -> None:
    """Fail now, not at the first checkpoint, when the output directory cannot be written."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"output_dir {output_dir!r} is not writable: {error}") from error


def hub_preflight(hub_model_id: str | None, token: str | None = None) -> None:
    """Before any download: a token with write access is available and the Hub answers."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if not hub_model_id:
        raise ValueError("push_to_hub is set but hub_model_id is not: pass --hub_model_id <user-or-org>/<name>.")
    if HF_HUB_OFFLINE:
        raise ConnectionError("push_to_hub is set but HF_HUB_OFFLINE=1: the Hub cannot be reached. Unset it.")
    token = token or get_token()
    if token is None:
        raise PermissionError("push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN.")
    try:
        identity = HfApi().whoami(token=token)
    except Exception as error:  # network errors and auth errors alike stop the run before any work
        raise ConnectionError(f"push_to_hub: the Hub did not accept the token or could not be reached: {error}") from error
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise PermissionError("push_to_hub: the Hugging Face token is read-only; create one with write access.")


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def configure_wandb(script_args: ScriptArguments, args: STAPOConfig, model_label: str) -> None:
    """W&B project, entity, group and tags; offline mode (with a note on syncing) when there is no API key."""
    if "wandb" not in args.report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", script_args.wandb_project or "stapo")
    if script_args.wandb_entity:
        os.environ.setdefault("WANDB_ENTITY", script_args.wandb_entity)
    if script_args.wandb_group:
        os.environ.setdefault("WANDB_RUN_GROUP", script_args.wandb_group)
    os.environ.setdefault("WANDB_TAGS", f"stapo-trl,{script_args.method},{model_label}")
    os.environ.setdefault("WANDB_DIR", args.output_dir)
    if not os.environ.get("WANDB_MODE") and not _has_wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
        print(
            "W&B: no API key found (WANDB_API_KEY or `wandb login`), so this run logs offline to "
            f"{args.output_dir}/wandb. Upload it later with: wandb sync {args.output_dir}/wandb/offline-run-*"
        )


def resume_checkpoint(args: STAPOConfig) -> str | None:
    """The checkpoint to resume from (`true` = the latest of output_dir), checked to be complete and readable."""
    from transformers.trainer_utils import get_last_checkpoint

    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() == "true":
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint=true but {args.output_dir!r} has no checkpoint-* folder.")
        value = last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint folder {value!r}.")
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


def load_training_prompts(script_args: ScriptArguments, tokenizer):
    """The training set as TRL `prompt` + `answer` columns, without prompts over `max_prompt_length` tokens."""
    from .data import load_training_dataset

    overrides = {
        "path": script_args.dataset_path,
        "config": script_args.dataset_config,
        "split": script_args.dataset_split,
        "question_column": script_args.question_column,
        "answer_column": script_args.answer_column,
    }
    dataset = load_training_dataset(script_args.dataset_name, **overrides)
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


def main(argv: list[str] | None = None) -> dict:
    """Run `train.py`; returns a summary (and, for the demo, the accuracy before and after)."""
    from accelerate import PartialState

    script_args, args, model_args = parse_args(argv)
    sys.argv[1:] = redact_secrets(sys.argv[1:])
    state = PartialState()
    if state.is_main_process:
        print(resolved_summary(script_args, args, model_args), flush=True)
        check_output_dir(args.output_dir)
    if not script_args.demo:
        resolve_training_spec(script_args.dataset_name)  # an unknown name fails before any download
    if args.push_to_hub and state.is_main_process:
        hub_preflight(args.hub_model_id, args.hub_token)
    checkpoint = resume_checkpoint(args)
    configure_wandb(script_args, args, model_label(model_args.model_name_or_path, script_args.demo))
    if script_args.demo:
        return _run_demo(script_args, args, checkpoint)
    return _run(script_args, args, model_args, checkpoint)


def _run(script_args, args, model_args, checkpoint) -> dict:
    from transformers import AutoTokenizer

    from .trainer import STAPOTrainer

    model_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    # TRL adds `trust_remote_code` (off unless asked) from the training arguments
    args.model_init_kwargs = {key: value for key, value in model_kwargs.items() if value is not None}
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=args.trust_remote_code,
    )
    train_dataset = load_training_prompts(script_args, tokenizer)
    trainer = STAPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_function(script_args.reward),
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    _add_benchmark_callback(trainer, script_args)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return {"global_step": result.global_step, "training_loss": result.training_loss}


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


def _run_demo(script_args, args, checkpoint) -> dict:
    from . import demo
    from .trainer import STAPOTrainer

    started = time.perf_counter()
    model, tokenizer, train_dataset, eval_dataset, info = demo.prepare_demo(
        args.output_dir,
        seed=args.seed,
        target_accuracy=script_args.demo_target_accuracy,
        warm_start_max_steps=script_args.demo_warm_start_steps,
    )
    trainer = STAPOTrainer(
        model=model,
        reward_funcs=reward_function(script_args.reward),
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=[demo.DemoMetricsCallback()],
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(args.output_dir)
    summary = demo.finish_demo(
        trainer.model,
        tokenizer,
        eval_dataset,
        info,
        args.output_dir,
        seed=args.seed,
        extra={"rl_steps": trainer.state.global_step, "seconds": round(time.perf_counter() - started, 1)},
    )
    print(f"{demo.format_demo_summary(summary)}. {summary['rl_steps']} STAPO steps, {summary['seconds']} s in all.")
    return summary
