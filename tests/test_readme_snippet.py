"""The README's Python example, run on CPU: the same code with a local tiny model, the dataset fixture and CPU sizes.

It runs in a fresh interpreter without a W&B key and without `WANDB_MODE`, as on a new user's machine: the run must
fall back to offline W&B with the message `stapo-train` prints, and `bf16` must follow the hardware (off on CPU).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "dapo-math-17k.jsonl"

# What changes between the README's GPU example and its CPU version, each replacement applied exactly once.
CPU_REPLACEMENTS = {
    '"Qwen/Qwen3-1.7B-Base"': "TINY_MODEL",
    'load_training_dataset("dapo-math-17k")': 'load_training_dataset("dapo-math-17k", path=FIXTURE)',
    "num_generations=8,": "num_generations=2,",
    "max_completion_length=4096,": (
        "max_completion_length=4, max_steps=1, per_device_train_batch_size=4, "
        "save_strategy='no', activation_checkpointing=False, use_cpu=True,"
    ),
}


def readme_python_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Use it from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs_on_cpu_and_falls_back_to_offline_wandb(tmp_path):
    source = readme_python_example()
    for old, new in CPU_REPLACEMENTS.items():
        assert source.count(old) == 1, f"the README example no longer contains {old!r}"
        source = source.replace(old, new)
    model_dir = tmp_path / "tiny"
    tokenizer = tiny_tokenizer()
    # Qwen3-1.7B-Base ships a chat template and TRL applies it to the conversational prompts; so does this one.
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    script = tmp_path / "example.py"
    script.write_text(
        f"TINY_MODEL = {str(model_dir)!r}\nFIXTURE = {str(FIXTURE)!r}\n{source}\n"
        "print('bf16', config.bf16, 'report_to', config.report_to, 'steps', trainer.state.global_step)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    wandb_dir = os.path.join("outputs/qwen3-1.7b-stapo", "wandb")
    assert f"W&B: no API key found (WANDB_API_KEY or `wandb login`), so this run logs offline to {wandb_dir}" in (
        completed.stdout
    )
    assert "bf16 False report_to ['wandb'] steps 1" in completed.stdout
    assert list((tmp_path / wandb_dir).glob("offline-run-*")), "no offline W&B run was written"
