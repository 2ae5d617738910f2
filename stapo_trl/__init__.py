"""stapo-trl: STAPO (silencing rare spurious tokens) for Hugging Face TRL."""

__version__ = "0.1.0"
