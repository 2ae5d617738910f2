"""The tiny model of the engine tests, saved to disk: DeepSpeed's launched runs and vLLM load it by path.

A module, not a conftest.py: a second conftest module would shadow tests/conftest.py for `from conftest import`.
"""

import pytest
from conftest import tiny_tokenizer

from stapo_trl.tiny import build_tiny_qwen3


def save_engine_model(directory):
    """Save a tiny Qwen3 whose projection matrices are partitioned by ZeRO-3 as shipped, with its tokenizer.

    ZeRO-3 keeps parameters of at most `stage3_param_persistence_threshold` elements (DeepSpeed's default 1e5)
    whole on every rank: with hidden size 320 every attention and MLP matrix (320 x 320, 320 x 640) has more and
    is sharded, the norms and the 24-token embedding are not. head_dim 64 is one the CPU attention kernels of vLLM
    accept.
    """
    tokenizer = tiny_tokenizer()
    model = build_tiny_qwen3(
        tokenizer,
        "test",
        hidden_size=320,
        num_attention_heads=5,
        num_key_value_heads=5,
        intermediate_size=640,
        max_position_embeddings=1024,  # room for the evaluation prompts, which are spelled out character by character
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def engine_model_dir(tmp_path_factory):
    return save_engine_model(tmp_path_factory.mktemp("engine-model"))
