"""Configuration of the STAPO trainer."""

import netrc
import os
from dataclasses import dataclass, fields

import torch
from trl import GRPOConfig

from .arguments import STAPOArguments, check_training_settings


def hardware_precision(use_cpu: bool = False) -> str:
    """The mixed precision this machine runs natively: `"bf16"`, `"fp16"` or `"fp32"`.

    bf16 only on a GPU with bf16 arithmetic (NVIDIA compute capability 8.0 or newer, or ROCm). On older GPUs (T4, V100)
    `torch.cuda.is_bf16_supported()` is True through emulation, which trains several times slower than fp16, so
    they get fp16; a CPU gets fp32 (TRL's default, bf16, fails on a CPU-only machine).
    """
    if use_cpu or not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def has_wandb_credentials() -> bool:
    """A W&B API key in `WANDB_API_KEY` or in `~/.netrc` (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def fall_back_to_offline_wandb(report_to: list[str], output_dir: str) -> None:
    """With W&B as a reporter, no API key and no explicit `WANDB_MODE`: log offline to `<output_dir>/wandb` and say
    how to upload the run, instead of failing at the first log with W&B's `No API key configured`."""
    if "wandb" not in report_to or os.environ.get("WANDB_MODE") or has_wandb_credentials():
        return
    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_DIR", output_dir)
    wandb_dir = os.path.join(os.environ["WANDB_DIR"], "wandb")
    print(
        "W&B: no API key found (WANDB_API_KEY or `wandb login`), so this run logs offline to "
        f"{wandb_dir}. Upload it later with: wandb sync {wandb_dir}/offline-run-*"
    )


@dataclass
class STAPOConfig(STAPOArguments, GRPOConfig):
    r"""
    Configuration class for the [`STAPOTrainer`].

    STAPO ([arXiv 2602.15620](https://huggingface.co/papers/2602.15620)) is a DAPO-style group objective in which
    the gradient of rare *spurious* tokens is silenced (S2T) and the loss is renormalised over the tokens that
    remain. A completion token is spurious when its sequence has a positive advantage, its probability under the
    current policy is below `spurious_prob_threshold` and its entropy is below `tau_h`, the
    `spurious_entropy_quantile`-quantile of the entropies of the *candidate* tokens (positive advantage and low
    probability) of the whole optimizer step on all processes (see `spurious_stats_scope`).

    Only the parameters specific to STAPO are listed here; every [`~trl.GRPOConfig`] parameter keeps its meaning.
    The defaults of `loss_type`, `epsilon`, `epsilon_high` and `beta` are the paper's (they differ from TRL's only
    in `epsilon_high`). Two defaults follow the machine, so that the same code runs on a GPU node and on a laptop:
    `bf16` and `fp16` left unset follow the GPU (`hardware_precision`: bf16 where it is native, fp16 on older GPUs
such as a T4, fp32 on a CPU), and W&B without an API key logs
    offline to `<output_dir>/wandb` (`fall_back_to_offline_wandb`, called by `STAPOTrainer` and `stapo-train`
    alike). Sizes and counts of zero or less, a non-positive `learning_rate` and out-of-range STAPO fields are
    rejected here (`check_training_settings`, the same check `stapo-train` runs), before TRL divides by them.

    Parameters:
        > Parameters that control S2T (silencing spurious tokens)

        silence_spurious_tokens (`bool`, *optional*, defaults to `True`):
            Whether to silence spurious tokens. With `False`, the trainer computes exactly the loss of
            [`~trl.GRPOTrainer`] with the same settings (the STAPO diagnostics are still logged).
        spurious_prob_threshold (`float`, *optional*, defaults to `0.002`):
            τ_p: a positive-advantage token whose probability is below this value is a candidate. Range: (0, 1].
        spurious_entropy_quantile (`float`, *optional*, defaults to `0.75`):
            q: candidates whose entropy is below the q-quantile of the candidates' entropies are silenced. `0.0`
            silences nothing and `1.0` silences every candidate. Range: [0, 1].
        spurious_entropy_threshold (`float` or `None`, *optional*, defaults to `None`):
            Absolute entropy threshold τ_h (in nats). When set, it replaces `spurious_entropy_quantile`. Range: >= 0.
        spurious_stats_scope (`str`, *optional*, defaults to `"step"`):
            Which tokens τ_h and the renormalised denominator are computed over. `"step"` is the paper's rule: at the
            first micro-step of each optimizer step, the step's candidates (all processes) are found with the current
            weights without gradient, τ_h is the quantile over all of them and the token-mean losses (`dapo`, `cispo`,
            `vespo`) divide by the step's kept tokens on all processes. It costs a gradient-free forward of the step's
            completions with a positive advantage (the only ones that can hold a candidate), each trimmed to its own
            tokens (see `spurious_scoring_token_budget`), skipped when TRL's generation-time pass already scored the
            batch with the same weights. `"micro_batch"` takes both from the current micro-batch (all processes) in
            the loss's own forward pass: no extra pass, but a lone candidate is never silenced and, with gradient
            accumulation, the denominator is TRL's scaled by the micro-batch's kept share. Evaluation always uses the
            evaluation batch.
        spurious_scoring_token_budget (`int` or `None`, *optional*, defaults to `None`):
            With `spurious_stats_scope="step"`, the scoring pass runs only the completions that can hold a candidate
            (a positive advantage), each trimmed to its own prompt + completion tokens, grouped longest first into
            model calls of at most this many positions (rows x the call's longest row); a longer row gets a call of
            its own. `None` takes the positions of the step's largest training micro-batch (its rows x its padded
            prompt + completion length), so that no scoring call holds more activations than the training forward of
            the same step. A larger budget means fewer calls (under ZeRO-3 each call gathers every parameter) and
            more padding inside a call. Range: >= 1.
        renormalize_entropy_mask (`bool`, *optional*, defaults to `False`):
            With `top_entropy_quantile < 1.0` (the 20-Entropy baseline), also remove the low-entropy tokens from the
            loss denominator, as the original "Beyond the 80/20 rule" code does. TRL's own mask only removes them
            from the numerator, which shrinks the step by about `1 / top_entropy_quantile`. Off by default so that a
            run with S2T off stays identical to [`~trl.GRPOTrainer`].
        spurious_token_log_steps (`int`, *optional*, defaults to `0`):
            Every this many optimizer steps, record the silenced tokens (text, the text before them, probability,
            entropy, advantage) in `<output_dir>/spurious_tokens.jsonl` and, when W&B is a reporter, as a W&B table.
            `0` disables the record.
        spurious_token_log_max (`int`, *optional*, defaults to `64`):
            Maximum number of silenced tokens recorded per logging step.

        > Parameters that control what `push_to_hub` uploads

        hub_include_run_files (`bool`, *optional*, defaults to `False`):
            Whether `push_to_hub` (at the end and, per `hub_strategy`, at every save) also uploads the run's own
            records: W&B's run folder (`<output_dir>/wandb`, with the host, user and command line), the silenced-token
            log `spurious_tokens.jsonl` (prompt and completion text) and evaluation generations (`eval_samples.jsonl`).
            By default only the model, its tokenizer and configs, the model card and `training_config.yaml` go up
            (and the checkpoints that `hub_strategy` asks for); transformers' pickled `training_args.bin` never does.
    """

    @classmethod
    def from_grpo_config(cls, grpo_config: GRPOConfig, **overrides) -> "STAPOConfig":
        """A `STAPOConfig` with every setting of `grpo_config`, S2T on with the paper's thresholds.

        Every field keeps the GRPO run's value, also where `STAPOConfig`'s defaults are the paper's (`epsilon_high`),
        so that the two runs differ only by S2T. `overrides` set any field on top, e.g. the S2T thresholds.
        `grpo_config.to_dict()` does not round-trip: it hides tokens, and of `generation_batch_size` and
        `steps_per_generation`, which `GRPOConfig` derives from each other, it keeps both, which `GRPOConfig` refuses.
        """
        accepted = {field.name for field in fields(cls) if field.init}
        values = {
            field.name: getattr(grpo_config, field.name) for field in fields(grpo_config) if field.name in accepted
        }
        values["generation_batch_size"] = None  # derived again from steps_per_generation, as it was
        return cls(**{**values, **overrides})

    def __post_init__(self):
        if self.bf16 is None and not self.fp16:
            precision = hardware_precision(self.use_cpu)
            self.bf16, self.fp16 = precision == "bf16", precision == "fp16"
        # TRL 1.16 defaults the old name `gradient_checkpointing` to True, which transformers >= 5.25 reads as a
        # deprecated alias and warns about on every config; TRL's default is carried to the new name instead. An
        # explicit `gradient_checkpointing=False` is left to transformers (and its warning).
        if self.activation_checkpointing is None and self.gradient_checkpointing is True:
            self.activation_checkpointing = True
        # Before TRL derives the batch arithmetic, which divides by several of these sizes.
        check_training_settings(vars(self))
        super().__post_init__()

    def __getstate__(self):
        # Checkpoints pickle the arguments (training_args.bin): never with a secret in them.
        state = dict(self.__dict__)
        for name in state:
            if name.endswith("_token") and state[name] is not None:
                state[name] = None
        return state
