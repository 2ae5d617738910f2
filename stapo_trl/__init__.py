"""stapo-trl: STAPO (silencing rare spurious tokens) for Hugging Face TRL.

The public names are resolved on first use (PEP 562), so ``import stapo_trl`` and the command-line tools' ``--help``
do not import torch, transformers or TRL until a command needs them.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> submodule that defines it
_PUBLIC = {
    "STAPOConfig": "config",
    "STAPOTrainer": "trainer",
    "SpuriousTokens": "s2t",
    "S2T_STATISTICS": "s2t",
    "entropy_histogram": "s2t",
    "find_candidates": "s2t",
    "find_spurious_tokens": "s2t",
    "find_spurious_tokens_in_batches": "s2t",
    "global_quantiles": "s2t",
    "histogram_quantiles": "s2t",
    "linear_quantile": "s2t",
    "nonfinite_tokens": "s2t",
    "s2t_statistics": "s2t",
    "stapo_policy_loss": "s2t",
}

__all__ = [*_PUBLIC, "__version__"]

if TYPE_CHECKING:
    from .config import STAPOConfig
    from .s2t import (
        S2T_STATISTICS,
        SpuriousTokens,
        entropy_histogram,
        find_candidates,
        find_spurious_tokens,
        find_spurious_tokens_in_batches,
        global_quantiles,
        histogram_quantiles,
        linear_quantile,
        nonfinite_tokens,
        s2t_statistics,
        stapo_policy_loss,
    )
    from .trainer import STAPOTrainer


def __getattr__(name: str):
    # Unknown names raise AttributeError, which lets `from stapo_trl import data` fall through to the submodule.
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
