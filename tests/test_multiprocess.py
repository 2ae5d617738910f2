"""Two real CPU processes (torchrun, gloo): the same S2T mask, tau_h, loss and gradients as one process, and whole
optimizer steps equal to the single-process reference at every batch shape."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_trainer, hand_batch, loss_grads_and_spurious
from test_step_scope import SHAPES, assert_step_matches, own_thresholds
from conftest import current_logps_and_entropies
from test_trainer import thresholds_that_silence_some

from stapo_trl import STAPOConfig, STAPOTrainer

SCRIPT = Path(__file__).parent / "scripts" / "s2t_two_processes.py"
STEP_SCRIPT = Path(__file__).parent / "scripts" / "step_scope_two_processes.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(script, *args, timeout):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(script), *args,
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-4000:]


def single_process(tmp_path):
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path / "one", spurious_entropy_quantile=0.5)
    inputs = hand_batch(trainer.processing_class)
    logps, _ = current_logps_and_entropies(trainer, inputs)
    trainer.args.spurious_prob_threshold = thresholds_that_silence_some(
        logps, inputs["advantages"], inputs["completion_mask"]
    )
    loss, grads, found = loss_grads_and_spurious(trainer, inputs)
    metrics = trainer._finish_s2t_window("train")
    return trainer.args.spurious_prob_threshold, loss, grads, found, metrics


def test_two_processes_equal_one(tmp_path):
    prob_threshold, loss, grads, result, metrics = single_process(tmp_path)
    assert result.spurious.any()
    output = tmp_path / "two.pt"
    torchrun(SCRIPT, str(output), repr(prob_threshold), timeout=300)
    two = torch.load(output)

    assert torch.equal(two["spurious"], result.spurious)
    assert two["entropy_threshold"].item() == result.entropy_threshold.item()
    assert two["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(two["grads"][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    for name in ("stapo/masked_tokens", "stapo/masked_frac", "stapo/candidate_frac", "stapo/entropy_threshold",
                 "stapo/entropy_p10", "stapo/entropy_p50", "stapo/entropy_p90"):  # fmt: skip
        assert two["metrics"][name] == pytest.approx(metrics[name], rel=1e-6), name


def test_two_processes_step_equals_whole_step_reference(tmp_path):
    """Every shape of tests/test_step_scope.py on 2 processes: the step-wide tau_h and denominator span both ranks."""
    output = tmp_path / "steps.pt"
    torchrun(STEP_SCRIPT, str(output), timeout=900)
    results = torch.load(output, weights_only=False)
    assert sorted(results) == sorted(SHAPES)
    for (gradient_accumulation_steps, _, _), steps in results.items():
        assert len(steps) == 2
        silenced, differs = 0, False
        for step in steps:
            reference = step["reference"]
            assert step["micro_steps_per_rank"] == gradient_accumulation_steps
            calls = step["scoring_calls_per_rank"]
            assert calls[0] == calls[1], "every process makes as many scoring calls (ZeRO-3 gathers inside each)"
            for planned, expected in zip(step["silenced"], reference["silenced"], strict=True):
                assert torch.equal(planned, expected)
            silenced += sum(int(mask.sum()) for mask in reference["silenced"])
            assert_step_matches(step, reference, step["loss"])
            tau_h = reference["entropy_threshold"].item()
            # a micro-step on its own spans the same micro-batch index on both ranks
            per_micro_step = [
                torch.cat(reference["candidate_entropies"][index :: gradient_accumulation_steps])
                for index in range(gradient_accumulation_steps)
            ]
            differs |= all(abs(own - tau_h) > 1e-6 for own in own_thresholds(per_micro_step, 0.75))
        assert silenced > 0
        if gradient_accumulation_steps > 1:
            assert differs
