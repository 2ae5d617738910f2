"""DeepSpeed ZeRO-2/3 for real: the shipped accelerate configs on 2 CPU processes over gloo, against the DDP config.

Each run is `accelerate launch --config_file accelerate_configs/<name>.yaml` with only the process count, the
precision (no bf16 on CPU) and a free port given on the command line; the launched script is
tests/scripts/engine_train.py. Tolerances: the engines sum the same float32 gradients in a different order
(DDP all-reduces buckets, ZeRO reduce-scatters partitions), so loss and rewards, computed before any update, match
exactly; what follows an update may differ by float32 rounding (a few 1e-7 relative).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_model import engine_model_dir  # noqa: F401 (a fixture)
from safetensors.torch import load_file
from test_multiprocess import free_port
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.engines

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "engine_train.py"
MAX_STEPS = 2
# Metrics of each logged step: the S2T decisions, rewards and lengths agree exactly between engines, what is
# computed from the weights to float32 rounding.
EXACT_METRICS = (
    "stapo/masked_tokens", "stapo/masked_frac", "stapo/candidate_frac", "stapo/nonfinite_tokens",
    "reward", "reward_std", "num_tokens", "completions/mean_length",
)  # fmt: skip
CLOSE_METRICS = (
    "loss", "grad_norm", "entropy", "stapo/entropy_threshold", "stapo/masked_entropy_mean", "stapo/masked_prob_mean",
    "stapo/entropy_p10", "stapo/entropy_p50", "stapo/entropy_p90",
)  # fmt: skip
# Parameters after two AdamW steps at lr 1e-4 (then 5e-5): AdamW's first steps move each element by about
# lr * gradient / |gradient|, so the rounding of the gradient does not matter, except for the few elements whose
# gradient is near 0 (about AdamW's eps, 1e-8), where it can change the update itself (measured: up to 3.8e-6 on
# 1 element in 100k). So: every element within 1e-5 (7% of the 1.5e-4 an element moves in the two steps), and
# at most 1 in 10^4 elements further apart than 1e-6.
PARAMETER_ATOL = 1e-5
PARAMETER_CLOSE = 1e-6


def launch(config, model_dir, output_dir, *, save=False, resume=False, timeout=600):
    """Run tests/scripts/engine_train.py under accelerate_configs/<config>.yaml; return the two ranks' results."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "accelerate_configs" / f"{config}.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(SCRIPT), str(model_dir), str(output_dir), str(MAX_STEPS), str(int(save)), str(int(resume)),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-6000:]
    return [torch.load(Path(output_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def runs(engine_model_dir, tmp_path_factory):
    """Each config's run, launched once per module on first use."""
    cache = {}

    def run(config, **kwargs):
        key = (config, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = launch(config, engine_model_dir, tmp_path_factory.mktemp(config), **kwargs)
        return cache[key]

    return run


def logged_steps(result):
    steps = [entry for entry in result["log_history"] if "loss" in entry]
    assert len(steps) == MAX_STEPS
    return steps


def assert_same_training(result, reference):
    assert result["completions"] == reference["completions"]  # generation saw the same weights and RNG
    for step, expected in zip(logged_steps(result), logged_steps(reference), strict=True):
        for name in EXACT_METRICS:
            assert step[name] == expected[name], name
        for name in CLOSE_METRICS:
            assert step[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name
    for name, expected in reference["final"].items():
        torch.testing.assert_close(result["final"][name], expected, rtol=0, atol=PARAMETER_ATOL, msg=name)
        apart = (result["final"][name] - expected).abs() > PARAMETER_CLOSE
        assert apart.float().mean() <= 1e-4, name


def test_ddp_reference_silences_tokens(runs):
    ranks = runs("ddp")
    assert [rank["engine"] for rank in ranks] == ["DistributedDataParallel"] * 2
    assert all(rank["num_processes"] == 2 for rank in ranks)
    assert ranks[0]["completions"] != ranks[1]["completions"]  # each rank generated its own share
    assert all(step["stapo/masked_tokens"] > 0 for step in logged_steps(ranks[0]))
    moved = [not torch.equal(ranks[0]["final"][name], ranks[1]["final"][name]) for name in ranks[0]["final"]]
    assert not any(moved)  # DDP keeps the replicas equal


@pytest.mark.parametrize("config, stage", [("zero3", 3), ("zero2", 2), ("zero3_offload", 3)])
def test_zero_equals_ddp(runs, config, stage):
    reference = runs("ddp")
    ranks = runs(config, save=config == "zero3")
    for rank, expected in zip(ranks, reference, strict=True):
        # not a silent fallback to DDP (which ACCELERATE_USE_CPU or use_cpu would cause)
        assert rank["engine"] == "DeepSpeedEngine" and rank["zero_stage"] == stage
        assert rank["num_processes"] == 2
        assert_same_training(rank, expected)
        assert all(step["stapo/masked_tokens"] > 0 for step in logged_steps(rank))


@pytest.mark.parametrize("config", ["zero3", "zero3_offload"])
def test_zero3_partitions_parameters(runs, config):
    ranks = runs(config, save=config == "zero3")
    threshold = ranks[0]["persistence_threshold"]
    for rank in ranks:
        assert len(rank["partitioning"]) == MAX_STEPS
        for step in rank["partitioning"]:
            sharded = {name: shape for name, shape in step.items() if shape[1] > threshold}
            assert len(sharded) == 14  # 7 attention and MLP matrices in each of the 2 layers
            for name, (numel, ds_numel, shard) in step.items():
                assert ds_numel is not None, name  # every parameter is managed by ZeRO-3
                if name in sharded:
                    assert numel == 0 and shard == ds_numel // 2, name  # released; this rank holds its half
                else:
                    assert numel == ds_numel, name  # small enough to stay whole on every rank


def test_zero2_keeps_whole_parameters(runs):
    for rank in runs("zero2"):
        for step in rank["partitioning"]:
            for name, (numel, ds_numel, _) in step.items():
                assert ds_numel is None and numel > 0, name


def test_zero3_checkpoint_loads_and_resumes(runs, engine_model_dir, tmp_path):
    ranks = runs("zero3", save=True)
    output_dir, final = Path(ranks[0]["output_dir"]), ranks[0]["final"]
    checkpoint = output_dir / f"checkpoint-{MAX_STEPS}"
    assert sorted(path.name for path in (checkpoint / f"global_step{MAX_STEPS}").glob("*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    ]  # one ZeRO shard per rank
    saved = load_file(checkpoint / "model.safetensors")  # the shards gathered (zero3_save_16bit_model)
    assert set(saved) == set(final) - {"lm_head.weight"}  # tied to the embedding
    for name, tensor in saved.items():
        assert torch.equal(tensor, final[name]), name
    loaded = dict(AutoModelForCausalLM.from_pretrained(checkpoint).named_parameters())
    for name, tensor in final.items():
        assert torch.equal(loaded[name].detach(), tensor), name

    # Resume from step 1 of the same run (its shards, optimizer states, RNG and scheduler) to step 2.
    shutil.copytree(output_dir / "checkpoint-1", tmp_path / "checkpoint-1")
    resumed = launch("zero3", engine_model_dir, tmp_path, save=True, resume=True)
    assert len(resumed[0]["partitioning"]) == 1  # only step 2 ran
    for rank, uninterrupted in zip(resumed, ranks, strict=True):
        for name, tensor in uninterrupted["final"].items():
            assert torch.equal(rank["final"][name], tensor), name
