"""train.py: parsing, method presets, preflights and a short real run on a local tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_model, tiny_tokenizer

from stapo_trl import launch
from stapo_trl.launch import check, configure_wandb, hub_preflight, parse
from stapo_trl.request import check_request, read_request

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "dapo-math-17k.jsonl"


def parse_args(argv):
    """`stapo-train`'s reading, checks of the plain values and parse."""
    request = read_request(argv)
    check_request(request)
    run = parse(request)
    return run.script_args, run.args, run.model_args


def test_model_alias_and_paper_defaults():
    script_args, args, model_args = parse_args(["--model", "Qwen/Qwen3-8B-Base"])
    assert model_args.model_name_or_path == "Qwen/Qwen3-8B-Base"
    assert script_args.method == "stapo" and script_args.dataset_name == "dapo-math-17k"
    assert script_args.reward == "boxed"
    assert args.silence_spurious_tokens and args.spurious_prob_threshold == 0.002
    assert args.spurious_entropy_quantile == 0.75
    assert (args.loss_type, args.epsilon, args.epsilon_high, args.beta) == ("dapo", 0.2, 0.28, 0.0)
    assert (args.learning_rate, args.weight_decay, args.warmup_steps) == (1e-6, 0.1, 10)
    assert args.lr_scheduler_type == "constant_with_warmup"
    assert (args.generation_batch_size, args.num_generations, args.max_completion_length) == (2048, 8, 15360)
    # one process: 512 completions (64 prompts) per optimizer step, 4 updates per generation batch
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 512
    assert args.steps_per_generation // args.gradient_accumulation_steps == 4
    assert args.output_dir == os.path.join("outputs", "Qwen3-8B-Base", "stapo")
    assert args.run_name == "stapo-Qwen3-8B-Base"


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("justrl", {"silence_spurious_tokens": False, "loss_type": "dapo", "top_entropy_quantile": 1.0}),
        ("entropy20", {"silence_spurious_tokens": False, "top_entropy_quantile": 0.2, "renormalize_entropy_mask": True}),
        ("grpo", {"silence_spurious_tokens": False, "loss_type": "grpo", "epsilon_high": 0.2, "beta": 0.04}),
    ],
)
def test_method_presets(method, expected):
    _, args, _ = parse_args(["--model", "m/x", "--method", method])
    assert {name: getattr(args, name) for name in expected} == expected
    assert args.run_name == f"{method}-x"


def test_explicit_flags_override_preset_and_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: grpo\nmodel_name_or_path: m/base\nbeta: 0.01\nlearning_rate: 3.0e-6\n")
    _, args, model_args = parse_args(["--config", str(recipe)])
    assert args.loss_type == "grpo" and args.beta == 0.01 and args.learning_rate == 3e-6  # recipe beats preset
    _, args, _ = parse_args(["--config", str(recipe), "--beta", "0.0", "--model", "m/other"])
    assert args.beta == 0.0  # command line beats recipe


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "m/x", "--method", "ppo"], "method must be one of stapo, justrl, entropy20, grpo"),
        (["--model", "m/x", "--reward", "f1"], "reward must be one of boxed, accuracy"),
        (["--model", "m/x", "--spurious_prob_threshold", "0"], "spurious_prob_threshold must be in (0, 1]"),
        (["--model", "m/x", "--spurious_entropy_quantile", "1.5"], "spurious_entropy_quantile must be in [0, 1]"),
        (["--model", "m/x", "--eval_benchmarks", "gsm8k"], "eval_benchmarks: unknown ['gsm8k']"),
        (["--method", "stapo"], "model_name_or_path (or --model) is required"),
        (["--config", "nope.yaml"], "no such recipe file"),
    ],
)
def test_bad_arguments_fail_with_the_field_name(argv, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        parse_args(argv)
    assert message in str(error.value)


def test_unknown_dataset_fails_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "resolve", lambda *args: pytest.fail("the run must not start"))
    with pytest.raises(ValueError, match="dapo-math-18k"):
        parse_args(["--model", "m/x", "--dataset_name", "dapo-math-18k", "--output_dir", str(tmp_path), "--report_to", "none"])


def test_hub_preflight_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "resolve", lambda *args: pytest.fail("the model must not be loaded"))
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE=1"):
        check(parse(read_request(
            ["--model", "m/x", "--output_dir", str(tmp_path), "--report_to", "none", "--push_to_hub",
             "--hub_model_id", "me/stapo-test"]
        )))  # fmt: skip
    with pytest.raises(ValueError, match="hub_model_id"):
        hub_preflight(None)


def test_wandb_falls_back_to_offline(tmp_path, monkeypatch, capsys):
    # configure_wandb writes os.environ: give it a copy so nothing leaks into later tests
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")})
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    script_args, args, _ = parse_args(["--model", "m/x", "--output_dir", str(tmp_path), "--wandb_group", "g"])
    assert args.report_to == ["wandb"]
    configure_wandb(script_args, args, "x")
    assert os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_TAGS"] == "stapo-trl,stapo,x" and os.environ["WANDB_RUN_GROUP"] == "g"
    assert "wandb sync" in capsys.readouterr().out

    monkeypatch.setenv("WANDB_MODE", "online")  # an explicit choice is respected
    configure_wandb(script_args, args, "x")
    assert os.environ["WANDB_MODE"] == "online"


def _train_tiny(tmp_path, *extra):
    model_dir = tmp_path / "tiny"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "run"
    argv = [
        "--model", str(model_dir), "--method", "stapo", "--dataset_name", "dapo-math-17k",
        "--dataset_path", str(FIXTURE), "--output_dir", str(output_dir), "--report_to", "none",
        "--bf16", "false", "--use_cpu", "true", "--per_device_train_batch_size", "4", "--generation_batch_size", "4",
        "--gradient_accumulation_steps", "1", "--num_generations", "2", "--max_completion_length", "4",
        "--max_steps", "2", "--save_steps", "1", "--spurious_prob_threshold", "0.05", "--spurious_token_log_steps",
        "1", "--activation_checkpointing", "false", "--dtype", "float32", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *argv], env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output_dir, completed


def test_short_run_on_a_local_model(tmp_path):
    output_dir, completed = _train_tiny(tmp_path)
    assert "per optimizer step  2 prompts = 4 completions" in completed.stdout
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert any("stapo/masked_frac" in entry for entry in state["log_history"])
    assert (output_dir / "model.safetensors").exists()
    assert "| S2T (silence spurious tokens) | on |" in (output_dir / "README.md").read_text()


def test_lora_run_saves_an_adapter(tmp_path):
    output_dir, _ = _train_tiny(tmp_path, "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj")
    adapter = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert (output_dir / "adapter_model.safetensors").exists()
    assert not (output_dir / "model.safetensors").exists()


def test_demo_recipe_runs_a_few_steps(tmp_path):
    """The README's first command, shortened: warm start, STAPO steps, metrics, plots and the summary."""
    output_dir = tmp_path / "demo"
    argv = [
        "--config", str(REPO / "recipes" / "demo_cpu.yaml"), "--output_dir", str(output_dir), "--max_steps", "2",
        "--demo_warm_start_steps", "4", "--per_device_train_batch_size", "16", "--save_steps", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "held-out accuracy (greedy)" in completed.stdout
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["rl_steps"] == 2 and 0.0 <= summary["accuracy_after_rl"]["greedy"] <= 1.0
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "reward" in record] == [1, 2]
    assert all("stapo/masked_frac" in record for record in records if "reward" in record)
    for name in ("metrics.csv", "training_curves.png", "model.safetensors", "warm_start.json"):
        assert (output_dir / name).stat().st_size > 0, name


def test_trl_grpo_keys_mean_the_same(tmp_path):
    """`trl grpo`'s dataset keys and reward name, in a config and on the command line."""
    config = tmp_path / "grpo.yaml"
    config.write_text(
        f"model_name_or_path: m/x\ndataset_name: {FIXTURE}\ndataset_config: null\ndataset_train_split: train\n"
        "dataset_streaming: false\nreward_funcs: [accuracy_reward]\nignore_bias_buffers: false\n"
        "question_column: prompt\nanswer_column: solution\n"
    )
    script_args, _, _ = parse_args(["--config", str(config)])
    assert (script_args.dataset_name, script_args.dataset_config) == (str(FIXTURE), None)
    assert (script_args.dataset_split, script_args.reward) == ("train", "accuracy")
    script_args, _, _ = parse_args(["--config", str(config), "--dataset_train_split", "test", "--reward_funcs",
                                    "accuracy_reward"])  # fmt: skip
    assert script_args.dataset_split == "test"


def test_a_dataset_read_only_by_datasets_is_checked_before_the_tokenizer(tmp_path, monkeypatch):
    """A folder of data files (like a Hub dataset) is checked right after `datasets` loads it, before the model."""
    import datasets
    import transformers

    from stapo_trl.data import DatasetCheckError

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"problem": "What is 1+1?", "solution": "2"}) + "\n")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("the tokenizer was loaded first")
    )
    request = read_request(["--model", "m/x", "--dataset_name", str(folder), "--output_dir", str(tmp_path / "out")])
    check_request(request)
    assert request.notes == [f"dataset {folder}: its rows are checked right after the download, before the model"]
    with pytest.raises(DatasetCheckError, match="The answer column 'answer' is missing"):
        launch.resolve(parse(request))
