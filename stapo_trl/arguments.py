"""The arguments of `stapo-train` that need neither torch nor TRL: methods, rewards, the script's own arguments,
STAPO's fields and the check of their values (`check_training_settings`).

They live apart from `launch.py` and `config.py` so that `stapo-train --help` can describe them, and its checks can
run, without importing torch, transformers or TRL (seconds of start-up). `STAPOConfig` mixes `STAPOArguments` into
TRL's `GRPOConfig` and runs the same check.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .data import BENCHMARKS, DEFAULT_TRAINING_DATASET

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
# Loss types of TRL 1.16 and how S2T renormalises each of them (see `STAPOConfig` and the README).
SUPPORTED_LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")
SPURIOUS_STATS_SCOPES = ("step", "micro_batch")
# The paper's runs: one node of 8 GPUs. A dry run without a stated world size shows the arithmetic on it.
PAPER_NUM_PROCESSES = 8
DEMO_OUTPUT_DIR = "outputs/demo"

# Sizes and counts of STAPO, TRL and transformers that must be > 0 (a 0 ends in a division by zero inside TRL, a
# negative one later still), with what they count.
POSITIVE_SETTINGS = {
    "per_device_train_batch_size": "number of completions",
    "gradient_accumulation_steps": "number of micro-batches",
    "num_generations": "number of completions per prompt",
    "generation_batch_size": "number of completions",
    "steps_per_generation": "number of micro-steps",
    "num_iterations": "number of passes over each generation batch",
    "max_completion_length": "number of tokens",
    "logging_steps": "number of steps",
    "save_steps": "number of steps",
    "save_total_limit": "number of checkpoints",
    "num_train_epochs": "number of epochs",
    "temperature": "sampling temperature",
    "vllm_tensor_parallel_size": "number of GPUs",
    "spurious_token_log_max": "number of tokens",
}
# Settings that must be >= 0.
NON_NEGATIVE_SETTINGS = ("warmup_steps", "weight_decay", "max_grad_norm", "beta", "epsilon", "epsilon_high")


def model_label(model_name_or_path: str | None, demo: bool) -> str:
    """The model's short name in run names, output folders and W&B tags."""
    return "tiny-demo" if demo else str(model_name_or_path).rstrip("/").split("/")[-1]


def default_output_dir(method: str, model_name_or_path: str | None, demo: bool) -> str:
    """`outputs/<model>/<method>`, or the demo's folder."""
    return DEMO_OUTPUT_DIR if demo else f"outputs/{model_label(model_name_or_path, demo)}/{method}"


@dataclass
class STAPOScriptArguments:
    """Arguments of `stapo-train` that are not training or model settings (the counterpart of TRL's
    `GRPOScriptArguments`, with its own name since the fields differ)."""

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
        metadata={"help": "Run the CPU demo: a tiny local model learns addition (the demo_cpu recipe)."},
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
    num_processes: int | None = field(
        default=None,
        metadata={
            "help": "Processes (GPUs) the run is sized for, as the recipes state it. --dry-run shows the batch "
            "arithmetic on them, and a launch on another number warns when that changes the per-update batch."
        },
    )
    accelerate_config_file: str | None = field(
        default=None,
        metadata={
            "help": "The accelerate config the run will be launched with (a file, or a shipped one by name: zero3); "
            "its num_processes sizes the run."
        },
    )
    dataset_test_split: str | None = field(
        default=None,
        metadata={
            "help": "TRL's key, accepted for `trl grpo` configs: the evaluation split, which `trl grpo` reads only "
            "with eval_strategy set and stapo-train never (it evaluates on eval_benchmarks)."
        },
    )

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
        if self.num_processes is not None and self.num_processes <= 0:
            raise ValueError(f"num_processes must be a positive number of processes, got {self.num_processes}.")
        if self.eval_samples <= 0:
            raise ValueError(f"eval_samples must be a positive number of samples per problem, got {self.eval_samples}.")
        if self.eval_max_new_tokens <= 0:
            raise ValueError(f"eval_max_new_tokens must be a positive number of tokens, got {self.eval_max_new_tokens}.")
        if self.eval_max_problems is not None and self.eval_max_problems <= 0:
            raise ValueError(f"eval_max_problems must be positive or unset, got {self.eval_max_problems}.")
        if self.eval_steps_benchmarks > 0 and not self.eval_benchmarks:
            raise ValueError("eval_steps_benchmarks is set but eval_benchmarks is empty: name the benchmarks.")


@dataclass
class STAPOArguments:
    """STAPO's own fields and the paper's defaults of four GRPO fields; `STAPOConfig` documents each of them."""

    silence_spurious_tokens: bool = field(
        default=True,
        metadata={
            "help": "Whether to silence spurious tokens (S2T). With `False`, the loss is exactly GRPOTrainer's with "
            "the same settings."
        },
    )
    spurious_prob_threshold: float = field(
        default=0.002,
        metadata={"help": "τ_p: positive-advantage tokens with probability below it are S2T candidates. Range (0, 1]."},
    )
    spurious_entropy_quantile: float = field(
        default=0.75,
        metadata={
            "help": "q: candidates with entropy below the q-quantile of the candidates' entropies (over the scope "
            "of `spurious_stats_scope`) are silenced. Range [0, 1]."
        },
    )
    spurious_entropy_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Absolute entropy threshold τ_h in nats; when set it replaces `spurious_entropy_quantile`. "
            "Range >= 0."
        },
    )
    spurious_stats_scope: str = field(
        default="step",
        metadata={
            "help": "Scope of tau_h and of the renormalised denominator: 'step' (the whole optimizer step on all "
            "processes, the paper's rule; a gradient-free forward of the step's positive-advantage completions) or "
            "'micro_batch' (the current micro-batch, no extra pass).",
            "choices": list(SPURIOUS_STATS_SCOPES),
        },
    )
    spurious_scoring_token_budget: int | None = field(
        default=None,
        metadata={
            "help": "spurious_stats_scope='step': most positions (rows x padded length) per model call of the "
            "gradient-free scoring pass. None: the positions of the step's largest training micro-batch, so that no "
            "scoring call holds more activations than a training forward. Larger: fewer calls (fewer parameter "
            "gathers under ZeRO-3), more padding."
        },
    )
    renormalize_entropy_mask: bool = field(
        default=False,
        metadata={
            "help": "With `top_entropy_quantile < 1`, also drop the masked low-entropy tokens from the loss "
            "denominator (as the original 80/20 code does)."
        },
    )
    spurious_token_log_steps: int = field(
        default=0,
        metadata={
            "help": "Every this many steps, record the silenced tokens to `spurious_tokens.jsonl` (and a W&B table). "
            "0 disables it."
        },
    )
    spurious_token_log_max: int = field(
        default=64,
        metadata={"help": "Maximum number of silenced tokens recorded per logging step."},
    )
    hub_include_run_files: bool = field(
        default=False,
        metadata={
            "help": "With push_to_hub, also upload the run's own records: W&B's run folder, spurious_tokens.jsonl and "
            "evaluation generations (eval_samples.jsonl). Off: only the model, tokenizer, configs, card and "
            "training_config.yaml (and checkpoints, per hub_strategy)."
        },
    )

    # Paper defaults (STAPO = JustRL recipe + S2T): DAPO token-mean loss, clip-higher, no KL term.
    loss_type: str = field(
        default="dapo",
        metadata={"help": f"Loss formulation, one of {', '.join(SUPPORTED_LOSS_TYPES)}. The paper uses 'dapo'."},
    )
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping epsilon (ε_low)."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clipping epsilon (ε_high)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient. The paper uses no KL term (0.0)."})


def check_training_settings(settings: Mapping[str, Any]) -> None:
    """Check the STAPO fields and the sizes and counts of a run; raises `ValueError` naming the field, its value and
    what is accepted.

    `settings` maps field names to values; absent fields and `None` are not checked, so the same function checks
    a whole `STAPOConfig` (before TRL derives anything from the sizes) and the settings a user gave `stapo-train`
    (before TRL is imported).
    """

    def given(name):
        return settings.get(name) is not None

    for name, unit in POSITIVE_SETTINGS.items():
        if given(name) and not settings[name] > 0:
            raise ValueError(f"{name} must be a positive {unit}, got {settings[name]}.")
    for name in NON_NEGATIVE_SETTINGS:
        if given(name) and not settings[name] >= 0:
            raise ValueError(f"{name} must be >= 0, got {settings[name]}.")
    if given("max_steps") and settings["max_steps"] != -1 and not settings["max_steps"] > 0:
        raise ValueError(f"max_steps must be a positive number of optimizer steps (or -1: num_train_epochs decides), "
                         f"got {settings['max_steps']}.")  # fmt: skip
    if given("top_p") and not 0.0 < settings["top_p"] <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {settings['top_p']}.")
    if given("learning_rate") and not settings["learning_rate"] > 0:
        raise ValueError(f"learning_rate must be > 0, got {settings['learning_rate']}.")
    if given("spurious_prob_threshold") and not 0.0 < settings["spurious_prob_threshold"] <= 1.0:
        raise ValueError(
            f"spurious_prob_threshold must be in (0, 1], got {settings['spurious_prob_threshold']}. The paper uses 0.002."
        )
    quantile = settings.get("spurious_entropy_quantile")
    if quantile is not None and not 0.0 <= quantile <= 1.0:
        raise ValueError(f"spurious_entropy_quantile must be in [0, 1], got {quantile}. The paper uses 0.75.")
    threshold = settings.get("spurious_entropy_threshold")
    if threshold is not None and not threshold >= 0.0:
        raise ValueError(f"spurious_entropy_threshold must be None or >= 0 (nats), got {threshold}.")
    budget = settings.get("spurious_scoring_token_budget")
    if budget is not None and budget < 1:
        raise ValueError(
            "spurious_scoring_token_budget must be None (the step's largest micro-batch) or >= 1 positions, got "
            f"{budget}."
        )
    if given("spurious_stats_scope") and settings["spurious_stats_scope"] not in SPURIOUS_STATS_SCOPES:
        raise ValueError(
            f"spurious_stats_scope must be one of {', '.join(SPURIOUS_STATS_SCOPES)}, got {settings['spurious_stats_scope']!r}."
        )
    if given("loss_type") and settings["loss_type"] not in SUPPORTED_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(SUPPORTED_LOSS_TYPES)}, got {settings['loss_type']!r}.")
    if settings.get("use_liger_kernel"):
        raise ValueError(
            "use_liger_kernel=True is not supported by STAPO: the Liger GRPO loss never exposes the per-token "
            "probabilities and entropies that S2T needs. Set use_liger_kernel=False."
        )
    if given("spurious_token_log_steps") and settings["spurious_token_log_steps"] < 0:
        raise ValueError(
            f"spurious_token_log_steps must be >= 0 (0 disables the record), got {settings['spurious_token_log_steps']}."
        )
