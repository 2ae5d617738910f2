"""Tiny Qwen3-architecture models and tokenizers built locally, with no download.

They serve the CPU demo, the offline tests and the notebooks' headless mode: the same code paths as a real run,
at a size that trains on two CPU cores in minutes.
"""

from collections.abc import Iterable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
# `\boxed{` is one token so that a completion `\boxed{42}<eos>` is five tokens, not eleven.
BOXED_TOKEN = "\\boxed{"
_TOKEN_PATTERN = Regex(r"\\boxed\{|<eos>|<pad>|<unk>|.")
# Every character of the addition prompts and answers ("What is 3+4?" -> "\boxed{7}").
ADDITION_CHARACTERS = "What is 0123456789+? \\boxed{}"


def as_pretrained_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """`tokenizer` as a transformers tokenizer with the project's `<pad>`/`<eos>`/`<unk>` and left padding (for
    generation), decoding without clean-up so that text round-trips."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_char_tokenizer(corpus: Iterable[str]) -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer from the characters of `corpus` (with `\\boxed{` as a single token).

    The vocabulary holds `<pad>`, `<eos>`, `<unk>`, `\\boxed{` and every character seen in `corpus`.
    """
    pre_tokenizer = pre_tokenizers.Split(_TOKEN_PATTERN, behavior="isolated")
    specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, BOXED_TOKEN]
    pieces = {piece for text in corpus for piece, _ in pre_tokenizer.pre_tokenize_str(text)} - set(specials)
    vocab = {token: index for index, token in enumerate(specials + sorted(pieces))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([PAD_TOKEN, EOS_TOKEN, UNK_TOKEN])
    return as_pretrained_tokenizer(tokenizer)


def _size(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, **more: int) -> dict[str, int]:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        **more,
    )


# Model sizes by name; `build_qwen3(size, **overrides)` changes any field.
QWEN3_SIZES: dict[str, dict[str, int]] = {
    # The default tiny model: ~1M parameters with the demo's vocabulary; the CPU demo's size.
    "tiny": _size(128, 4, 4, 2, 512, max_position_embeddings=128),
    # The notebooks' offline mode: warm-starts on single-digit addition in seconds.
    "notebook": _size(64, 2, 2, 1, 256, max_position_embeddings=32),
    # The offline tests: the smallest model that still has every Qwen3 piece (GQA, two layers).
    "test": _size(32, 2, 2, 1, 64, max_position_embeddings=128),
    # The architecture of Qwen/Qwen3-1.7B-Base (its config.json), with random weights: the GPU benchmarks.
    "qwen3-1.7b": _size(2048, 28, 16, 8, 6144, head_dim=128, vocab_size=151936),
    # The architecture of Qwen/Qwen3-8B-Base (its config.json: untied embeddings), with random weights.
    "qwen3-8b": _size(4096, 36, 32, 8, 12288, head_dim=128, vocab_size=151936, tie_word_embeddings=False),
}


def qwen3_config(size: str = "tiny", **overrides) -> Qwen3Config:
    """The `Qwen3Config` of a named size (`QWEN3_SIZES`), tied embeddings unless the size unties them, no BOS token;
    `overrides` win."""
    if size not in QWEN3_SIZES:
        raise ValueError(f"size: unknown model size {size!r}; accepted: {', '.join(QWEN3_SIZES)}")
    fields = {"tie_word_embeddings": True, "bos_token_id": None, **QWEN3_SIZES[size], **overrides}
    fields.setdefault("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    return Qwen3Config(**fields)


def build_qwen3(
    size: str = "tiny",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
    **overrides,
) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3-architecture causal LM of a named size (`qwen3_config`), no download.

    The weights depend only on `seed` (the caller's RNG state is left as it was); they are created on `device` (on
    `"meta"`: no memory, e.g. to count parameters) and cast to `dtype`. Token ids `pad_token_id`/`eos_token_id` are
    set in the config and the generation config (0 and 1 are those of `build_char_tokenizer`).
    """
    config = qwen3_config(size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **overrides)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    model = model.to(dtype)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    return model


def build_addition_tokenizer(extra_characters: str = "") -> PreTrainedTokenizerFast:
    """`build_char_tokenizer` over `ADDITION_CHARACTERS` (and `extra_characters`)."""
    return build_char_tokenizer([ADDITION_CHARACTERS + extra_characters])


def build_tiny_qwen3(tokenizer: PreTrainedTokenizerFast, size: str = "tiny", seed: int = 0, **overrides):
    """`build_qwen3` sized for `tokenizer`: its vocabulary, pad and EOS tokens (float32, on CPU)."""
    return build_qwen3(
        size,
        seed=seed,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )
