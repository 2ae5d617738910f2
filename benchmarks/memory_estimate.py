"""Per-GPU memory of the paper's recipes on one node of 8 x 80 GB, on paper.

Terms, per GPU, for Qwen3-1.7B/8B/14B-Base under ZeRO-2 / ZeRO-3 (with and without CPU offload):
1. model states (bf16 weights, gradients, fp32 master weights and AdamW moments): DeepSpeed's own estimators,
   `deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs` and
   `deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs` (the functions behind the
   `..._all_cold` printers, which are also called with `--print-deepspeed`);
2. activations of one micro-batch (the recipes use 1 completion per GPU) of prompt 1024 + completion 15360 tokens
   with activation (gradient) checkpointing: the checkpointed layer inputs of every layer, plus one layer recomputed
   with its backward (counted as twice its forward activations; attention by SDPA/flash, no L x L matrix);
3. the log-prob/entropy head: TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head` ->
   `trl.kernels.ChunkedLogProbFunction`) never builds the (T, V) logits; it works in tiles of 4096 tokens x 32768
   vocabulary entries (`TOKEN_CHUNK_SIZE`, `_CHUNKED_LOGPROB_CHUNK_SIZE`) in bf16, and its backward allocates the
   LM-head weight gradient in fp32 (V x H x 4 bytes) and the hidden-state gradient in fp32 before casting them to bf16;
   under ZeRO-3 the head's weight is gathered whole for the pass (V x H x 2 bytes). The full-logits alternative
   (fp32 logits + log-softmax, 2 x T x V x 4 bytes) is shown for contrast;
4. STAPO's own tensors: per-token (B, T) masks and vectors, about 40 bytes per completion token;
5. the colocated vLLM engine: `vllm_gpu_memory_utilization` x 80 GB (from recipes/*/stapo.yaml). With
   `vllm_enable_sleep_mode: true` TRL puts vLLM to sleep at level 2 during the update (weights and KV cache
   released); a residual (CUDA context, graphs) is assumed to stay, `--vllm-residual-gib`;
6. a fixed framework overhead for the trainer process (CUDA context, NCCL buffers, allocator fragmentation),
   `--overhead-gib`.

A recipe fits when both phases fit in 80 GB:
- generation: model states + vLLM share + overhead (activations are freed, vLLM is awake);
- update: model states + activations + head + S2T + overhead + vLLM residual (sleep mode on; the recipes' setting);
  the table also shows the update with sleep mode off (vLLM share held).

These are estimates, not measurements: no GPU was available where this was written. `benchmarks/gpu_step.py`
measures a single-GPU step of the 1.7B architecture when a GPU is available.

    python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml

from _common import REPO_ROOT, write_result

GIB = 2**30
GPU_GIB = 80.0
NUM_GPUS = 8

# Architectures of the paper's models, from the Hub configs:
#   https://huggingface.co/Qwen/Qwen3-1.7B-Base/blob/main/config.json
#   https://huggingface.co/Qwen/Qwen3-8B-Base/blob/main/config.json
#   https://huggingface.co/Qwen/Qwen3-14B-Base/blob/main/config.json
# (also Table 1 of the Qwen3 technical report, arXiv 2505.09388: layers 28/36/40, heads Q/KV 16/8, 32/8, 40/8;
#  tied embeddings for 1.7B only). The parameter counts computed from them are checked against the published totals
#  (1.7B, 8.2B, 14.8B) in `parameter_count` below.
MODELS = {
    "Qwen3-1.7B-Base": dict(
        hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=6144, vocab_size=151936, tie_word_embeddings=True, published_params=1.7e9,
        recipe="recipes/qwen3-1.7b/stapo.yaml",
    ),
    "Qwen3-8B-Base": dict(
        hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False, published_params=8.2e9,
        recipe="recipes/qwen3-8b/stapo.yaml",
    ),
    "Qwen3-14B-Base": dict(
        hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
        intermediate_size=17408, vocab_size=151936, tie_word_embeddings=False, published_params=14.8e9,
        recipe="recipes/qwen3-14b/stapo.yaml",
    ),
}

# Which ZeRO setting each recipe's header names (accelerate_configs/zero2.yaml, zero3.yaml, zero3_offload.yaml).
ZERO_SETTINGS = {
    "ZeRO-2": dict(stage=2, offload_optimizer=False, offload_params=False),
    "ZeRO-2 + optimizer offload": dict(stage=2, offload_optimizer=True, offload_params=False),
    "ZeRO-3": dict(stage=3, offload_optimizer=False, offload_params=False),
    "ZeRO-3 + optimizer offload": dict(stage=3, offload_optimizer=True, offload_params=False),
    "ZeRO-3 + optimizer & param offload": dict(stage=3, offload_optimizer=True, offload_params=True),
}
RECIPE_ZERO = {"Qwen3-1.7B-Base": "ZeRO-2", "Qwen3-8B-Base": "ZeRO-3", "Qwen3-14B-Base": "ZeRO-3"}

TOKEN_CHUNK = 4096  # trl.kernels.chunked_logprob.TOKEN_CHUNK_SIZE (TRL 1.16)
VOCAB_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE (TRL 1.16)
S2T_BYTES_PER_TOKEN = 40  # ~10 (B, T) bool/fp32 tensors in STAPOTrainer._compute_loss and s2t.py


def parameter_count(m: dict) -> tuple[int, int]:
    """Total parameters and the largest single module's parameters (the embedding or the LM head)."""
    h, layers, i = m["hidden_size"], m["num_hidden_layers"], m["intermediate_size"]
    q, kv = m["num_attention_heads"] * m["head_dim"], m["num_key_value_heads"] * m["head_dim"]
    attention = h * q + 2 * h * kv + q * h + 2 * m["head_dim"]  # q, k, v, o projections; q_norm, k_norm
    mlp = 3 * h * i
    per_layer = attention + mlp + 2 * h  # two RMSNorms
    embedding = m["vocab_size"] * h
    total = embedding * (1 if m["tie_word_embeddings"] else 2) + layers * per_layer + h
    return total, embedding


def model_states_bytes(total: int, largest: int, zero: dict) -> int:
    """Per-GPU model states from DeepSpeed's estimators (8 GPUs, 1 node)."""
    if zero["stage"] == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(
            total, num_gpus_per_node=NUM_GPUS, num_nodes=1, cpu_offload=zero["offload_optimizer"]
        )
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(
            total,
            largest,
            num_gpus_per_node=NUM_GPUS,
            num_nodes=1,
            cpu_offload=zero["offload_optimizer"],
            cpu_offload_params=zero["offload_params"],
            zero_init=True,
        )
    return gpu


def activation_bytes(m: dict, tokens: int) -> dict:
    """bf16 activations of one sequence of `tokens` tokens with per-layer activation checkpointing."""
    h, i = m["hidden_size"], m["intermediate_size"]
    q, kv = m["num_attention_heads"] * m["head_dim"], m["num_key_value_heads"] * m["head_dim"]
    # One decoder layer's saved activations per token (elements): hidden-sized (norm in/out x2, o_proj out, residuals),
    # query-sized (q, q_norm, rotary q, attention out), kv-sized (k, k_norm, rotary k, v, + 1 for the SDPA workspace),
    # MLP (gate, up, SiLU(gate), product); plus fp32 RMSNorm upcasts (2 x hidden x 4 bytes).
    layer_elements = 6 * h + 4 * q + 5 * kv + 4 * i
    layer = tokens * (2 * layer_elements + 2 * 4 * h)
    checkpoints = m["num_hidden_layers"] * tokens * h * 2
    return {"checkpointed_layer_inputs": checkpoints, "one_layer_recomputed_with_backward": 2 * layer}


def head_bytes(m: dict, completion_tokens: int, zero_stage: int) -> dict:
    """TRL's fused log-prob/entropy head during the backward (its peak), and full logits for contrast."""
    h, v = m["hidden_size"], m["vocab_size"]
    n = completion_tokens
    tile = min(n, TOKEN_CHUNK) * VOCAB_CHUNK * 2  # bf16 projection tile
    grad_weight_fp32 = v * h * 4
    grad_weight_bf16 = v * h * 2  # the cast at the end of the backward, while the fp32 one is still alive
    grad_hidden_fp32 = n * h * 4
    hidden_copy = n * h * 2  # hidden_states[mask]
    per_token = n * 4 * 8  # running max, sums, log-probs, entropy... (fp32)
    gathered_weight = v * h * 2 if zero_stage == 3 else 0
    fused = tile + grad_weight_fp32 + grad_weight_bf16 + grad_hidden_fp32 + hidden_copy + per_token + gathered_weight
    return {
        "fused_head_peak": fused,
        "of_which_lm_head_weight_grad_fp32_plus_bf16": grad_weight_fp32 + grad_weight_bf16,
        "of_which_tiles": tile,
        "of_which_gathered_head_weight_zero3": gathered_weight,
        "full_logits_fp32_for_contrast": 2 * n * v * 4,
    }


def recipe_settings(path: str) -> dict:
    with open(REPO_ROOT / path, encoding="utf-8") as handle:
        recipe = yaml.safe_load(handle)
    return {
        key: recipe.get(key)
        for key in (
            "vllm_gpu_memory_utilization",
            "vllm_tensor_parallel_size",
            "vllm_enable_sleep_mode",
            "max_completion_length",
            "per_device_train_batch_size",
            "activation_checkpointing",
        )
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--completion-tokens", type=int, default=15360)
    parser.add_argument("--overhead-gib", type=float, default=3.0, help="trainer CUDA context, NCCL, fragmentation")
    parser.add_argument("--vllm-residual-gib", type=float, default=2.0, help="vLLM memory left while asleep (level 2)")
    parser.add_argument("--print-deepspeed", action="store_true", help="also print DeepSpeed's own _all_cold tables")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    tokens = args.prompt_tokens + args.completion_tokens

    rows = []
    deepspeed_tables = {}
    for name, m in MODELS.items():
        total, largest = parameter_count(m)
        recipe = recipe_settings(m["recipe"])
        vllm_share = recipe["vllm_gpu_memory_utilization"] * GPU_GIB * GIB
        activations = activation_bytes(m, tokens)
        s2t = S2T_BYTES_PER_TOKEN * args.completion_tokens
        # DeepSpeed's printed tables (the functions the brief names), captured for the record.
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            estimate_zero2_model_states_mem_needs_all_cold(total, num_gpus_per_node=NUM_GPUS, num_nodes=1)
            estimate_zero3_model_states_mem_needs_all_cold(total, largest, num_gpus_per_node=NUM_GPUS, num_nodes=1)
        deepspeed_tables[name] = buffer.getvalue()
        if args.print_deepspeed:
            print(f"--- {name} ---\n{buffer.getvalue()}")
        for zero_name, zero in ZERO_SETTINGS.items():
            states = model_states_bytes(total, largest, zero)
            head = head_bytes(m, args.completion_tokens, zero["stage"])
            act = sum(activations.values())
            overhead = args.overhead_gib * GIB
            update = states + act + head["fused_head_peak"] + s2t + overhead
            generation = states + vllm_share + overhead
            row = {
                "model": name,
                "params": total,
                "params_published": m["published_params"],
                "zero": zero_name,
                "recipe_zero": RECIPE_ZERO[name] == zero_name,
                "model_states_gib": states / GIB,
                "activations_gib": act / GIB,
                "activations_detail_gib": {k: v / GIB for k, v in activations.items()},
                "fused_head_gib": head["fused_head_peak"] / GIB,
                "fused_head_detail_gib": {k: v / GIB for k, v in head.items()},
                "s2t_gib": s2t / GIB,
                "overhead_gib": args.overhead_gib,
                "vllm_share_gib": vllm_share / GIB,
                "vllm_gpu_memory_utilization": recipe["vllm_gpu_memory_utilization"],
                "vllm_tensor_parallel_size": recipe["vllm_tensor_parallel_size"],
                "generation_phase_gib": generation / GIB,
                "update_phase_sleep_gib": (update + args.vllm_residual_gib * GIB) / GIB,
                "update_phase_no_sleep_gib": (update + vllm_share) / GIB,
            }
            row["fits_with_sleep_mode"] = max(row["generation_phase_gib"], row["update_phase_sleep_gib"]) <= GPU_GIB
            row["fits_without_sleep_mode"] = max(row["generation_phase_gib"], row["update_phase_no_sleep_gib"]) <= GPU_GIB
            rows.append(row)

    header = (
        f"{'model':16s} {'ZeRO':36s} {'states':>7s} {'activ.':>7s} {'head':>6s} {'vLLM':>6s} {'gen':>6s} "
        f"{'upd(sleep)':>10s} {'upd(awake)':>10s}  fits (sleep / awake)"
    )
    print(
        f"Per-GPU memory (GiB) on {NUM_GPUS} x {GPU_GIB:.0f} GB, micro-batch 1 x ({args.prompt_tokens} + "
        f"{args.completion_tokens}) tokens, activation checkpointing, TRL fused LM head; overhead "
        f"{args.overhead_gib} GiB, vLLM asleep keeps {args.vllm_residual_gib} GiB. * = the recipe's ZeRO setting.\n"
    )
    print(header)
    for row in rows:
        mark = "*" if row["recipe_zero"] else " "
        print(
            f"{row['model']:16s} {mark}{row['zero']:35s} {row['model_states_gib']:7.1f} {row['activations_gib']:7.1f} "
            f"{row['fused_head_gib']:6.1f} {row['vllm_share_gib']:6.1f} {row['generation_phase_gib']:6.1f} "
            f"{row['update_phase_sleep_gib']:10.1f} {row['update_phase_no_sleep_gib']:10.1f}  "
            f"{'yes' if row['fits_with_sleep_mode'] else 'NO'} / {'yes' if row['fits_without_sleep_mode'] else 'NO'}"
        )
    print("\nparameter counts from the configs vs published:")
    for name, m in MODELS.items():
        total, largest = parameter_count(m)
        print(f"  {name}: {total / 1e9:.2f}B (published {m['published_params'] / 1e9:.1f}B), largest module {largest / 1e6:.0f}M")
    print("\nGRPO baseline (beta 0.04) also holds a reference model in bf16 (TRL: whole under ZeRO-2, sharded under ZeRO-3):")
    for name, m in MODELS.items():
        total, _ = parameter_count(m)
        stage = 2 if RECIPE_ZERO[name] == "ZeRO-2" else 3
        ref = 2 * total / (NUM_GPUS if stage == 3 else 1)
        print(f"  {name} ({RECIPE_ZERO[name]}): +{ref / GIB:.1f} GiB per GPU in both phases")
    print(
        f"\nS2T's own per-token tensors: {S2T_BYTES_PER_TOKEN * args.completion_tokens / 2**20:.2f} MiB per "
        f"{args.completion_tokens}-token completion. Full fp32 logits + log-softmax would need "
        f"{2 * args.completion_tokens * 151936 * 4 / GIB:.1f} GiB; the fused head avoids them."
    )
    write_result(
        "memory_estimate",
        {
            "settings": vars(args) | {"gpus": NUM_GPUS, "gpu_gib": GPU_GIB, "tokens_per_sequence": tokens},
            "models": {name: {k: v for k, v in m.items()} for name, m in MODELS.items()},
            "rows": rows,
            "deepspeed_all_cold_tables": deepspeed_tables,
            "note": "Estimates on paper (DeepSpeed's estimators + the activation, head and vLLM terms above); no GPU "
            "measurement.",
        },
        output=args.output,
    )


if __name__ == "__main__":
    main()
