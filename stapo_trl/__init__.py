"""stapo-trl: STAPO (silencing rare spurious tokens) for Hugging Face TRL."""

from .config import STAPOConfig
from .s2t import (
    SpuriousTokens,
    find_candidates,
    find_spurious_tokens,
    global_quantiles,
    linear_quantile,
    nonfinite_tokens,
    stapo_policy_loss,
)
from .trainer import STAPOTrainer

__version__ = "0.1.0"

__all__ = [
    "STAPOConfig",
    "STAPOTrainer",
    "SpuriousTokens",
    "find_candidates",
    "find_spurious_tokens",
    "global_quantiles",
    "linear_quantile",
    "nonfinite_tokens",
    "stapo_policy_loss",
    "__version__",
]
