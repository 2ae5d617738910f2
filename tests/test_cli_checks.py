"""Every check of `stapo-train` comes before any download or write: one row per check, run as a user runs it.

Each row starts the command in an empty working directory, offline, with an empty Hugging Face cache, and asserts
the one-line message (field, value, what is accepted), exit code 2, and that afterwards the working directory, the
output_dir and the cache are as they were: empty. Offline, a check that came after the first Hub access would end
in the Hub's error instead of its own message.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# vLLM is an optional extra and may be installed (the engine tests install it): the vLLM row hides it the way an
# environment without it looks to `importlib.util.find_spec`.
WITHOUT_VLLM = "import sys; sys.modules['vllm'] = None; from stapo_trl.cli import main; main(sys.argv[1:])"
# A Hub id, a GPU-sized model: never downloaded, since each check fails first.
HUB_MODEL = ["--model", "Qwen/Qwen3-8B-Base"]
ON_CPU = ["--use_cpu", "true"]


def run_cli(argv, cwd, *, hide_vllm=False):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "WANDB_", "STAPO_"))}
    env.update(
        HF_HOME=str(cwd / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        CUDA_VISIBLE_DEVICES="",  # the machine without a GPU, on any machine
        PYTHONPATH=str(ROOT),
    )
    entry = ["-c", WITHOUT_VLLM] if hide_vllm else ["-m", "stapo_trl.cli"]
    return subprocess.run(
        [sys.executable, *entry, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


CHECKS = {
    "non-positive learning rate": (
        [*HUB_MODEL, *ON_CPU, "--learning_rate=-1e-6"],
        "learning_rate must be > 0, got -1e-06",
    ),
    "zero learning rate": ([*HUB_MODEL, *ON_CPU, "--learning_rate", "0"], "learning_rate must be > 0, got 0.0"),
    "local dataset path that does not exist": (
        [*HUB_MODEL, *ON_CPU, "--dataset_name", "data/my_train.jsonl"],
        "dataset_name: no such local file or folder 'data/my_train.jsonl' (it looks like a path, not a Hub id); "
        "accepted: an existing path, a Hub dataset id (owner/name) or one of",
    ),
    "use_vllm without vLLM installed": (
        [*HUB_MODEL, *ON_CPU, "--use_vllm", "true"],
        'use_vllm=True but vLLM is not installed: pip install "stapo-trl[vllm]"',
    ),
    "a model on a machine without CUDA": (
        HUB_MODEL,
        "model_name_or_path='Qwen/Qwen3-8B-Base' needs a GPU and this machine has none (no CUDA device visible); "
        "run the CPU demo instead: stapo-train --config demo_cpu",
    ),
    "output_dir below a file": (
        [*HUB_MODEL, *ON_CPU, "--output_dir", "a_file/run"],
        "output_dir 'a_file/run' is not writable: ",
    ),
    "resume without a checkpoint": (
        [*HUB_MODEL, *ON_CPU, "--resume_from_checkpoint", "true"],
        "resume_from_checkpoint=true but 'outputs/Qwen3-8B-Base/stapo' has no checkpoint-* folder.",
    ),
    "push_to_hub offline": (
        [*HUB_MODEL, *ON_CPU, "--push_to_hub", "true", "--hub_model_id", "me/stapo"],
        "push_to_hub is set but HF_HUB_OFFLINE=1: the Hub cannot be reached. Unset it.",
    ),
    "unknown method": ([*HUB_MODEL, "--method", "ppo"], "method must be one of stapo, justrl, entropy20, grpo"),
    "missing recipe file": (
        ["--config", "recipes/nope.yaml"],
        "--config: no such recipe file 'recipes/nope.yaml' and no shipped recipe of that name; shipped recipes: "
        "demo_cpu, qwen3-1.7b/entropy20,",
    ),
    "no model": (["--method", "stapo"], "model_name_or_path (or --model) is required"),
}


@pytest.mark.parametrize(("argv", "message"), CHECKS.values(), ids=CHECKS.keys())
def test_check_fails_in_one_line_before_anything_is_downloaded_or_written(argv, message, tmp_path):
    if "a_file/run" in argv:
        (tmp_path / "a_file").write_text("")
    before = files_under(tmp_path)
    completed = run_cli(argv, tmp_path, hide_vllm="--use_vllm" in argv)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert completed.stdout == ""
    error = completed.stderr.strip()
    assert error.startswith("stapo-train: error: ") and "\n" not in error, error
    assert message in error
    assert error.endswith("(--debug shows the traceback)")
    assert files_under(tmp_path) == before  # no output_dir, no Hugging Face cache, nothing else


def test_debug_shows_the_traceback(tmp_path):
    completed = run_cli([*HUB_MODEL, *ON_CPU, "--learning_rate=-1e-6", "--debug"], tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.startswith("Traceback (most recent call last):")
    assert "learning_rate must be > 0" in completed.stderr


def test_dry_run_passes_every_check_and_writes_nothing(tmp_path):
    completed = run_cli([*HUB_MODEL, *ON_CPU, "--dry-run"], tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "All checks passed; nothing was downloaded or written (--dry-run)." in completed.stdout
    assert "Qwen/Qwen3-8B-Base" in completed.stdout
    assert files_under(tmp_path) == []
