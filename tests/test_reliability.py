"""Failure modes: bad input stops before any download, a killed run resumes to the same result, secrets stay out."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer

from stapo_trl import launch
from stapo_trl.launch import CorruptCheckpointError, check, check_checkpoint, parse
from stapo_trl.request import check_request, read_request

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "dapo-math-17k.jsonl"


@pytest.fixture
def no_loading(monkeypatch):
    """Any model, tokenizer or dataset load fails the test: the checks must come first."""
    import datasets
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model, tokenizer or dataset was loaded before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(launch, "resolve", refuse)


def main(argv):
    """The stages of `stapo-train` before anything is loaded."""
    request = read_request(argv)
    check_request(request)
    return check(parse(request))


def _checkpoint(tmp_path, step):
    folder = tmp_path / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    tiny_model(tiny_tokenizer()).save_pretrained(folder)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


FAIL_FAST = [
    (["--method", "ppo"], "method must be one of stapo, justrl, entropy20, grpo"),
    (["--reward", "f1"], "reward must be one of boxed, accuracy"),
    (["--spurious_prob_threshold", "0"], "spurious_prob_threshold must be in (0, 1], got 0.0"),
    (["--spurious_prob_threshold", "1.5"], "spurious_prob_threshold must be in (0, 1], got 1.5"),
    (["--spurious_entropy_quantile", "-0.1"], "spurious_entropy_quantile must be in [0, 1], got -0.1"),
    (["--spurious_entropy_threshold", "-1"], "spurious_entropy_threshold must be None or >= 0"),
    (["--spurious_scoring_token_budget", "0"], "spurious_scoring_token_budget must be None"),
    (["--loss_type", "ppo"], "loss_type must be one of dapo, grpo, bnpo, dr_grpo, cispo, sapo, luspo, vespo"),
    (["--use_liger_kernel", "true"], "use_liger_kernel=True is not supported by STAPO"),
    (["--max_completion_length", "0"], "max_completion_length must be a positive number of tokens, got 0"),
    (["--num_generations", "7"], "generation_batch_size (2048) must be divisible by num_generations (7)"),
    (["--num_generations", "1", "--generation_batch_size", "8"], "GRPO requires at least 2 generations"),
    (["--spurious_token_log_steps", "-1"], "spurious_token_log_steps must be >= 0"),
    (["--max_prompt_length", "0"], "max_prompt_length must be a positive number of tokens"),
    (["--dataset_name", "dapo-math-18k"], "dapo-math-18k"),
    (["--eval_benchmarks", "gsm8k"], "eval_benchmarks: unknown ['gsm8k']"),
    (["--eval_steps_benchmarks", "10"], "eval_steps_benchmarks is set but eval_benchmarks is empty"),
    (["--push_to_hub", "--hub_model_id", "me/x"], "HF_HUB_OFFLINE=1"),
    (["--push_to_hub"], "hub_model_id is not"),
    (["--resume_from_checkpoint", "true"], "has no checkpoint-* folder"),
    (["--resume_from_checkpoint", "/no/such/checkpoint"], "no checkpoint folder '/no/such/checkpoint'"),
    (["--config", "recipes/no-such.yaml"], "no such recipe file 'recipes/no-such.yaml'"),
]


@pytest.mark.parametrize(("flags", "message"), FAIL_FAST, ids=[" ".join(flags) for flags, _ in FAIL_FAST])
def test_bad_input_fails_before_any_load(flags, message, tmp_path, no_loading):
    argv = ["--model", "Qwen/Qwen3-8B-Base", "--output_dir", str(tmp_path / "out"), "--report_to", "none", *flags]
    with pytest.raises(Exception) as error:
        main(argv)
    assert not isinstance(error.value, AssertionError), error.value
    assert message in str(error.value)


def test_unwritable_output_dir_fails_before_any_load(tmp_path, no_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="output_dir .* is not writable"):
        main(["--model", "m/x", "--output_dir", str(blocker / "out"), "--report_to", "none"])


def test_corrupted_checkpoint_names_the_file_and_the_previous_checkpoint(tmp_path):
    _checkpoint(tmp_path, 1)
    latest = _checkpoint(tmp_path, 2)
    check_checkpoint(str(latest))  # a complete checkpoint passes
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError) as error:
        check_checkpoint(str(latest))
    assert "model.safetensors is truncated or corrupted" in str(error.value)
    assert f"--resume_from_checkpoint {tmp_path / 'checkpoint-1'}" in str(error.value)

    (latest / "trainer_state.json").write_text('{"global_step": ')
    with pytest.raises(CorruptCheckpointError, match="trainer_state.json is truncated or corrupted"):
        check_checkpoint(str(latest))


def test_corrupted_checkpoint_stops_resume_before_any_load(tmp_path, no_loading):
    latest = _checkpoint(tmp_path, 3)
    (latest / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CorruptCheckpointError, match="checkpoint-3"):
        main(["--model", "m/x", "--output_dir", str(tmp_path), "--report_to", "none", "--resume_from_checkpoint", "true"])


def _run(args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_sigkill_and_resume_equals_one_run(tmp_path):
    script = str(SCRIPTS / "train_killable.py")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    completed = _run([script, str(straight), "6", "0", "0"])
    assert completed.returncode == 0, completed.stderr[-3000:]

    killed = _run([script, str(interrupted), "6", "4", "0"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / "checkpoint-5").exists()
    resumed = _run([script, str(interrupted), "6", "0", "1"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, actual = torch.load(straight / "final.pt"), torch.load(interrupted / "final.pt")
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)
    history = json.loads((interrupted / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4, 5, 6]


def test_planted_secrets_never_reach_disk_or_logs(tmp_path):
    hub_secret, wandb_secret = "hf_PLANTEDhubTOKEN0123456789", "PLANTEDwandbKEY0123456789abcdef0123456789"
    model_dir, output_dir = tmp_path / "tiny", tmp_path / "run"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    argv = [
        str(REPO / "train.py"), "--model", str(model_dir), "--dataset_path", str(FIXTURE),
        "--output_dir", str(output_dir), "--report_to", "wandb", "--hub_token", hub_secret,
        "--per_device_train_batch_size", "4", "--generation_batch_size", "4", "--gradient_accumulation_steps", "1",
        "--num_generations", "2", "--max_completion_length", "4", "--max_steps", "2", "--save_steps", "1",
        "--activation_checkpointing", "false", "--dtype", "float32", "--use_cpu", "true",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(PYTHONPATH=str(REPO), WANDB_API_KEY=wandb_secret, WANDB_MODE="offline")
    completed = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (output_dir / "checkpoint-2" / "training_args.bin").exists()
    assert list(output_dir.glob("wandb/offline-run-*")), "the W&B offline run should be in the output directory"
    leaks = [
        str(path)
        for path in output_dir.rglob("*")
        if path.is_file() and any(secret.encode() in path.read_bytes() for secret in (hub_secret, wandb_secret))
    ]
    assert leaks == []
    for stream in (completed.stdout, completed.stderr):
        assert hub_secret not in stream and wandb_secret not in stream


def test_remote_code_is_off_unless_asked():
    assert parse(read_request(["--model", "m/x"])).args.trust_remote_code is False


def test_redact_secrets():
    from stapo_trl.launch import redact_secrets

    argv = ["--hub_token", "hf_x", "--hub-token=hf_y", "--model", "m", "--report_to", "wandb"]
    assert redact_secrets(argv) == [
        "--hub_token", "<redacted>", "--hub-token=<redacted>", "--model", "m", "--report_to", "wandb"
    ]  # fmt: skip
