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


def test_gpu_step_dry_run_parses_and_sizes_the_model():
    out = run("gpu_step.py", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "1.72B parameters" in out.stdout
    assert "('grpo', 4096)" in out.stdout and "('stapo_s2t_on', 8192)" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_step_refuses_without_a_gpu():
    out = run("gpu_step.py", "--steps", "1")
    assert out.returncode == 2
    assert "No CUDA device" in out.stdout and "Nothing was run" in out.stdout


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
