#!/usr/bin/env python
"""Train a model with STAPO, or one of the paper's baselines, on math with verifiable rewards (= `stapo-train`).

    accelerate launch train.py --model Qwen/Qwen3-8B-Base                       # the paper's STAPO recipe
    accelerate launch train.py --model Qwen/Qwen3-8B-Base --method justrl       # baselines: justrl, entropy20, grpo
    accelerate launch --config_file accelerate_configs/zero3.yaml train.py --config recipes/qwen3-14b/stapo.yaml
    python train.py --config recipes/demo_cpu.yaml                              # the CPU demo, a few minutes

Every STAPOConfig, TRL GRPOConfig, transformers TrainingArguments and TRL ModelConfig field is a flag; `--help` shows
STAPO's and the recipe's options, `--help-all` all of them, `--dry-run` the resolved settings after every check.
"""

from stapo_trl.cli import main

if __name__ == "__main__":
    main()
