"""Configuration of the STAPO trainer."""

from dataclasses import dataclass, field

from trl import GRPOConfig

# Loss types of TRL 1.16 and how S2T renormalises each of them (see `STAPOConfig` below and the README).
SUPPORTED_LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")
SPURIOUS_STATS_SCOPES = ("step", "micro_batch")


@dataclass
class STAPOConfig(GRPOConfig):
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
    in `epsilon_high`).

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
            first micro-step of each optimizer step, every micro-batch of the step (all processes) is scored with the
            current weights without gradient, τ_h is the quantile over all of the step's candidates and the token-mean
            losses (`dapo`, `cispo`, `vespo`) divide by the step's kept tokens on all processes. It costs one
            gradient-free forward pass per micro-batch, skipped when TRL's generation-time pass already scored the
            batch with the same weights. `"micro_batch"` takes both from the current micro-batch (all processes) in
            the loss's own forward pass: no extra pass, but a lone candidate is never silenced and, with gradient
            accumulation, the denominator is TRL's scaled by the micro-batch's kept share. Evaluation always uses the
            evaluation batch.
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
    """

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
            "help": "q: candidates with entropy below the q-quantile of the candidates' entropies (whole micro-batch, "
            "all processes) are silenced. Range [0, 1]."
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
            "processes, the paper's rule; one extra gradient-free forward per micro-batch) or 'micro_batch' (the "
            "current micro-batch, no extra pass).",
            "choices": list(SPURIOUS_STATS_SCOPES),
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

    # Paper defaults (STAPO = JustRL recipe + S2T): DAPO token-mean loss, clip-higher, no KL term.
    loss_type: str = field(
        default="dapo",
        metadata={"help": f"Loss formulation, one of {', '.join(SUPPORTED_LOSS_TYPES)}. The paper uses 'dapo'."},
    )
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping epsilon (ε_low)."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clipping epsilon (ε_high)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient. The paper uses no KL term (0.0)."})

    def __post_init__(self):
        super().__post_init__()
        self._validate_stapo_fields()

    def __getstate__(self):
        # Checkpoints pickle the arguments (training_args.bin): never with a secret in them.
        state = dict(self.__dict__)
        for name in state:
            if name.endswith("_token") and state[name] is not None:
                state[name] = None
        return state

    def _validate_stapo_fields(self):
        if not 0.0 < self.spurious_prob_threshold <= 1.0:
            raise ValueError(
                f"spurious_prob_threshold must be in (0, 1], got {self.spurious_prob_threshold}. "
                "The paper uses 0.002."
            )
        if not 0.0 <= self.spurious_entropy_quantile <= 1.0:
            raise ValueError(
                f"spurious_entropy_quantile must be in [0, 1], got {self.spurious_entropy_quantile}. "
                "The paper uses 0.75."
            )
        if self.spurious_entropy_threshold is not None and not self.spurious_entropy_threshold >= 0.0:
            raise ValueError(
                f"spurious_entropy_threshold must be None or >= 0 (nats), got {self.spurious_entropy_threshold}."
            )
        if self.spurious_stats_scope not in SPURIOUS_STATS_SCOPES:
            raise ValueError(
                f"spurious_stats_scope must be one of {', '.join(SPURIOUS_STATS_SCOPES)}, got {self.spurious_stats_scope!r}."
            )
        if self.loss_type not in SUPPORTED_LOSS_TYPES:
            raise ValueError(
                f"loss_type must be one of {', '.join(SUPPORTED_LOSS_TYPES)}, got {self.loss_type!r}."
            )
        if self.max_completion_length is not None and self.max_completion_length <= 0:
            raise ValueError(
                f"max_completion_length must be a positive number of tokens, got {self.max_completion_length}."
            )
        if self.use_liger_kernel:
            raise ValueError(
                "use_liger_kernel=True is not supported by STAPO: the Liger GRPO loss never exposes the per-token "
                "probabilities and entropies that S2T needs. Set use_liger_kernel=False."
            )
        if self.spurious_token_log_steps < 0:
            raise ValueError(
                f"spurious_token_log_steps must be >= 0 (0 disables the record), got {self.spurious_token_log_steps}."
            )
        if self.spurious_token_log_max < 1:
            raise ValueError(f"spurious_token_log_max must be >= 1, got {self.spurious_token_log_max}.")
