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
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_tiny_qwen3(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Qwen3ForCausalLM:
    """A randomly initialised Qwen3-architecture causal LM sized for `tokenizer` (float32, tied embeddings)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=hidden_size // num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
