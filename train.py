#!/usr/bin/env python
"""Train a model with STAPO, or one of the paper's baselines, on math with verifiable rewards.

    accelerate launch train.py --model Qwen/Qwen3-8B-Base                       # the paper's STAPO recipe
    accelerate launch train.py --model Qwen/Qwen3-8B-Base --method justrl       # baselines: justrl, entropy20, grpo
    accelerate launch --config_file accelerate_configs/zero3.yaml train.py --config recipes/qwen3-14b/stapo.yaml
    python train.py --config recipes/demo_cpu.yaml                              # the CPU demo, a few minutes

Every STAPOConfig, TRL GRPOConfig, transformers TrainingArguments and TRL ModelConfig field is a flag; see --help.
"""

from stapo_trl.launch import main

if __name__ == "__main__":
    main()
