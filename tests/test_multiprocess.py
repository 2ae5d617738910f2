"""Two real CPU processes (torchrun, gloo) give the same S2T mask, tau_h, loss and gradients as one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_trainer, hand_batch, loss_and_grads
from test_trainer import current_logps_and_entropies, thresholds_that_silence_some

import stapo_trl.trainer as trainer_module
from stapo_trl import STAPOConfig, STAPOTrainer

SCRIPT = Path(__file__).parent / "scripts" / "s2t_two_processes.py"


def single_process(tmp_path, monkeypatch):
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path / "one", spurious_entropy_quantile=0.5)
    inputs = hand_batch(trainer.processing_class)
    logps, _ = current_logps_and_entropies(trainer, inputs)
    trainer.args.spurious_prob_threshold = thresholds_that_silence_some(
        logps, inputs["advantages"], inputs["completion_mask"]
    )
    captured = {}
    find_spurious_tokens = trainer_module.find_spurious_tokens

    def capture(*args, **kwargs):
        captured["result"] = find_spurious_tokens(*args, **kwargs)
        return captured["result"]

    monkeypatch.setattr(trainer_module, "find_spurious_tokens", capture)
    loss, grads = loss_and_grads(trainer, inputs)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    return trainer.args.spurious_prob_threshold, loss, grads, captured["result"], metrics


def test_two_processes_equal_one(tmp_path, monkeypatch):
    prob_threshold, loss, grads, result, metrics = single_process(tmp_path, monkeypatch)
    assert result.spurious.any()
    output = tmp_path / "two.pt"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(SCRIPT), str(output), repr(prob_threshold),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    two = torch.load(output)

    assert torch.equal(two["spurious"], result.spurious)
    assert two["entropy_threshold"].item() == result.entropy_threshold.item()
    assert two["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    for name in ("stapo/masked_tokens", "stapo/masked_frac", "stapo/candidate_frac", "stapo/entropy_threshold",
                 "stapo/entropy_p10", "stapo/entropy_p50", "stapo/entropy_p90"):  # fmt: skip
        assert two["metrics"][name] == pytest.approx(metrics[name], rel=1e-6), name
