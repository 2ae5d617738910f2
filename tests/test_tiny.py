"""The one builder of tiny Qwen3 models and character tokenizers."""

import pytest
import torch

from stapo_trl.tiny import (
    ADDITION_CHARACTERS,
    QWEN3_SIZES,
    build_addition_tokenizer,
    build_qwen3,
    build_tiny_qwen3,
    qwen3_config,
)


def test_the_qwen3_1_7b_size_has_the_real_parameter_count():
    # Qwen3-1.7B-Base: 1.72B parameters with tied embeddings (counted once), built on the meta device.
    model = build_qwen3("qwen3-1.7b", device="meta")
    assert sum(p.numel() for p in model.parameters()) == 1_720_574_976
    assert model.config.head_dim == 128 and model.config.tie_word_embeddings


def test_the_qwen3_8b_size_has_the_real_parameter_count():
    # Qwen3-8B-Base by hand: untied input and output embeddings (151936 x 4096 each), 36 layers of q and o (4096 x
    # 4096), k and v (4096 x 1024: 8 KV heads of 128), the MLP's three 4096 x 12288, two norms of 4096 and the q/k norms
    # of 128; then the final norm.
    model = build_qwen3("qwen3-8b", device="meta")
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288 + 2 * 4096 + 2 * 128
    assert sum(p.numel() for p in model.parameters()) == 2 * 151936 * 4096 + 36 * per_layer + 4096 == 8_190_735_360
    assert not model.config.tie_word_embeddings


def test_test_size_by_hand():
    tokenizer = build_addition_tokenizer()
    model = build_tiny_qwen3(tokenizer, "test")
    vocab, hidden, intermediate, layers = len(tokenizer), 32, 64, 2
    # Per layer: q (32x32), k and v (one KV head of 16: 16x32 each), o (32x32), the MLP's three 32x64, two norms
    # of 32 and the q/k norms of the head dimension 16; plus the tied embedding and the final norm.
    per_layer = 2 * hidden * hidden + 2 * 16 * hidden + 3 * hidden * intermediate + 2 * hidden + 2 * 16
    assert sum(p.numel() for p in model.parameters()) == vocab * hidden + layers * per_layer + hidden
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_weights_depend_on_the_seed_only_and_leave_the_rng_alone():
    tokenizer = build_addition_tokenizer()
    state = torch.random.get_rng_state()
    first = build_tiny_qwen3(tokenizer, "test", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    again = build_tiny_qwen3(tokenizer, "test", seed=1)
    other = build_tiny_qwen3(tokenizer, "test", seed=2)
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first.state_dict()[weight], again.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], other.state_dict()[weight])


def test_overrides_win_and_an_unknown_size_is_named():
    assert qwen3_config("test", max_position_embeddings=64).max_position_embeddings == 64
    assert qwen3_config("tiny").hidden_size == QWEN3_SIZES["tiny"]["hidden_size"] == 128
    with pytest.raises(ValueError, match="size: unknown model size 'huge'; accepted: tiny, notebook, test, qwen3-1.7b"):
        qwen3_config("huge")


def test_addition_tokenizer_covers_the_task():
    tokenizer = build_addition_tokenizer()
    ids = tokenizer("What is 3+4? \\boxed{7}", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "What is 3+4? \\boxed{7}"
    assert len(tokenizer) == 4 + len(set(ADDITION_CHARACTERS.replace("\\boxed{", "")))
