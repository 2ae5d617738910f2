"""Fast checks of the benchmark scripts on CPU: `python -m pytest benchmarks/tests -q`.

The measurements themselves take minutes; these only check that the scripts parse, refuse what they cannot do here,
and that their pure parts compute what they claim.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCHMARKS))


def run(script, *args):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_gpu_step_runs_end_to_end_on_cpu(tmp_path):
    """The GPU benchmark's whole path (model, trainers, interleaved steps, scoring counts, generation, report) on a
    tiny model on CPU."""
    output = tmp_path / "gpu_step.json"
    out = run(
        "gpu_step.py", "--device", "cpu", "--model-size", "test", "--micro-batch-size", "2",
        "--gradient-accumulation-steps", "2", "--updates-per-generation", "2", "--num-generations", "2",
        "--mean-completion-length", "24",
        "--max-completion-length", "32", "--prompt-lengths", "4", "12", "--rounds", "2", "--generate-tokens", "4",
        "--output", str(output),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(output.read_text())
    assert sorted(result["step_time_s"]) == sorted(["grpo", "micro_batch", "step_before", "step"])
    assert all(timing["n"] == 2 and timing["median"] > 0 for timing in result["step_time_s"].values())
    before, after = result["scoring"]["step_before"], result["scoring"]["step"]
    # before: every row of the 2 micro-batches of each step, padded, one call each; after: A > 0 rows, trimmed
    assert before["scoring_calls_per_step"] == 2
    assert before["scoring_positions_per_step"] == before["padded_positions_per_step"]
    assert after["floor_tokens_per_step"] <= after["scoring_positions_per_step"] < before["scoring_positions_per_step"]
    assert result["same_silenced_tokens"] is True
    assert result["generation"]["new_tokens"] == 4 and result["generation"]["sequences"] == 8
    assert 0 < result["generation_share_of_grpo_rl_step"] < 1
    assert 0 < result["completion_lengths"]["truncated_share"] < 1 and 0 < result["positive_share"] < 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_step_refuses_without_a_gpu():
    out = run("gpu_step.py", "--rounds", "1")
    assert out.returncode == 2
    assert "No CUDA device" in out.stdout and "nothing was run" in out.stdout


def test_scoring_tokens_counts_both_passes_in_a_training_run(tmp_path):
    output = tmp_path / "scoring.json"
    out = run(
        "scoring_tokens.py", "--max-steps", "4", "--gradient-accumulation-steps", "2", "--updates-per-generation", "2",
        "--num-generations", "4", "--max-completion-length", "48", "--min-completion-length", "4",
        "--output", str(output),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(output.read_text())
    summary = result["summary"]
    before, after = summary["per_variant"]["before"], summary["per_variant"]["after"]
    assert before["steps_needing_scoring"] == after["steps_needing_scoring"] == 2  # steps 2 and 4
    assert before["scoring_calls_per_scored_step"] == 2  # one per micro-batch
    assert after["floor_tokens_total"] <= after["scoring_positions_total"] < before["scoring_positions_total"]
    assert summary["same_completions"] and summary["same_silenced_tokens"]


def test_memory_estimate_runs_and_counts_the_published_parameters(tmp_path):
    output = tmp_path / "memory.json"
    out = run("memory_estimate.py", "--output", str(output))
    assert out.returncode == 0, out.stderr
    result = json.loads(output.read_text())
    for row in result["rows"]:
        assert abs(row["params"] - row["params_published"]) / row["params_published"] < 0.02
    recipe_rows = [row for row in result["rows"] if row["recipe_zero"]]
    assert len(recipe_rows) == 3
    assert all(row["fits_with_sleep_mode"] for row in recipe_rows)


def test_s2t_op_bookkeeping_matches_the_rule():
    import s2t_op

    inputs = s2t_op.synthetic_inputs(4, 64, improbable_fraction=0.5)
    found = s2t_op.op_find(inputs)
    counts, histogram, keep = s2t_op.op_bookkeeping(inputs, found)
    assert int(counts[4]) == int(found.spurious.sum())
    assert int(counts[2]) == int(keep.sum()) == int(inputs["mask"].sum()) - int(found.spurious.sum())
    assert int(histogram.sum()) == int(inputs["mask"].sum())
    assert bool((found.spurious <= found.candidates).all())
    loss = s2t_op.op_loss(inputs, keep)
    assert torch.isfinite(loss)


def test_s2t_op_scope_decisions_count_the_lone_candidates():
    import s2t_op

    # one candidate per micro-step on average: alone it is never silenced per micro-batch, often per step
    result = s2t_op.scope_decisions(1, micro_steps=16, seeds=2)
    shares = result["silenced_share_of_candidates"]
    assert result["candidates"] > 0
    assert shares["micro_batch"] < shares["step"]
    assert 0 < result["differing_decisions_share_of_candidates"] <= 1


def test_step_cost_tensor_check_flags_a_vocab_sized_tensor():
    import step_cost

    records = {
        "grpo": [("parent", "aten.mm", (600, 100), "torch.float32", 60000)],
        "stapo_s2t_on": [
            ("parent", "aten.mm", (600, 100), "torch.float32", 60000),
            ("stapo_own", "aten.exp", (2, 3, 100), "torch.float32", 600),
        ],
    }
    result = step_cost.tensor_check(records, batch_size=2, completion_length=3, vocab_size=100)
    assert result["no_BTV_tensor_in_stapo_code"] is False
    assert result["tensors_larger_than_BT_only_in_stapo"] == [{"shape": [2, 3, 100], "dtype": "torch.float32", "count": 1}]


def test_cost_model_by_hand():
    import cost_model

    args = cost_model.parse_args(
        ["--completions", "4", "--updates", "2", "--prompt-length", "10", "--max-completion-length", "90",
         "--mean-prompt-length", "5", "--mean-completion-length", "45", "--positive-share", "0.5",
         "--padding-in-calls", "1", "--generation-shares", "0.5"]
    )  # fmt: skip
    result = cost_model.cost_model(args)
    # width 100, 2 completions per update: update 2 x 2 x 100 x 4; TRL's pass 4 x 100; scoring in 1 of the 2 updates:
    # before 2 x 100, after 2 x 0.5 x (5 + 45)
    assert result["work_per_generation_batch"] == {
        "update": 1600, "trl_generation_time_pass": 400, "scoring_before": 200, "scoring_after": 50
    }  # fmt: skip
    (row,) = result["rows"]  # a GRPO RL step: (1600 + 400) / (1 - 0.5)
    assert row["before_share_of_rl_step"] == pytest.approx(200 / 4200)
    assert row["after_share_of_rl_step"] == pytest.approx(50 / 4050)
