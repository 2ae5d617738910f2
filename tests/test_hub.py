"""Publishing to the Hub as a user meets it: `stapo-train --push_to_hub` and `stapo-eval --hub_model_id` run as
subprocesses from a folder outside the clone, with the Hub client answered by a local stand-in (`tests/fake_hub/`)
where it sends: what is uploaded, the card's metadata, evaluation results, and resuming from a Hub checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from stapo_trl import hub
from stapo_trl.launch import parse as parse_request
from stapo_trl.request import check_request, read_request

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO / "tests" / "fixtures" / "datasets"
FAKE_HUB_SITE = REPO / "tests" / "fake_hub"
sys.path.insert(0, str(FAKE_HUB_SITE))
import fake_hub  # noqa: E402

BIN = Path(sys.executable).parent
DAPO_ID = "open-r1/DAPO-Math-17k-Processed"
# What a run uploads: the model, its tokenizer and configs, the card and the resolved settings.
MODEL_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_config.yaml",
}


def hub_env(fake_hub_root, **extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WANDB_", "HF_HUB_OFFLINE"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(FAKE_HUB_SITE), str(REPO)]),
        FAKE_HUB=str(fake_hub_root),
        HF_TOKEN="hf_test_token",
        HF_ENDPOINT="http://127.0.0.1:9",  # anything the stand-in does not answer fails at once
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update({"WANDB_MODE": "disabled", **extra})
    return {key: value for key, value in env.items() if value is not None}


def run(command, argv, env, cwd, expect=0):
    completed = subprocess.run(
        [str(BIN / command), *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == expect, completed.stderr[-4000:]
    return completed


def train_argv(fixture_model_dir, output_dir, method, *extra):
    return [
        "--model", str(fixture_model_dir), "--method", method, "--dataset_name", "dapo-math-17k",
        "--dataset_path", str(DATASETS / "dapo-math-17k.jsonl"), "--output_dir", str(output_dir),
        "--bf16", "false", "--use_cpu", "true", "--per_device_train_batch_size", "4", "--generation_batch_size", "4",
        "--gradient_accumulation_steps", "1", "--num_generations", "2", "--max_completion_length", "4",
        "--max_steps", "2", "--save_steps", "1", "--activation_checkpointing", "false", "--dtype", "float32",
        "--spurious_prob_threshold", "0.05", "--max_prompt_length", "4096", *extra,
    ]  # fmt: skip


def commits(root, repo_id):
    return [
        call for call in fake_hub.calls(root) if call["operation"] == "create_commit" and call["repo_id"] == repo_id
    ]


def card_of(root, repo_id):
    return ModelCard.load(root / "repos" / repo_id / "README.md")


def test_stapo_run_uploads_the_model_only_and_stapo_eval_adds_its_results_to_the_card(fixture_model_dir, tmp_path):
    root, output_dir, repo_id = tmp_path / "hub", tmp_path / "run", "tester/stapo-tiny"
    argv = train_argv(
        fixture_model_dir, output_dir, "stapo", "--report_to", "wandb",
        "--push_to_hub", "--hub_model_id", repo_id, "--hub_strategy", "end",
    )  # fmt: skip
    # Records of an earlier run in the same folder (a random tiny model earns no reward, so this one silences
    # nothing): the silenced tokens with their text, and the generations of an evaluation.
    (output_dir / "eval" / "earlier").mkdir(parents=True)
    (output_dir / "eval" / "earlier" / "eval_samples.jsonl").write_text('{"completion": "private"}\n')
    (output_dir / "spurious_tokens.jsonl").write_text('{"context": "private"}\n')
    # No W&B key (HOME without .netrc): the run logs offline to <output_dir>/wandb and says how to sync it.
    env = hub_env(root, WANDB_MODE=None, WANDB_API_KEY=None, HOME=str(tmp_path))
    completed = run("stapo-train", argv, env, cwd=tmp_path)
    assert f"Upload it later with: wandb sync {output_dir}/wandb/offline-run-*" in completed.stdout

    calls = fake_hub.calls(root)
    assert [call["operation"] for call in calls[:2]] == ["whoami", "create_repo"]
    (push,) = commits(root, repo_id)  # hub_strategy="end": one upload, at the end
    assert set(push["added"]) == MODEL_FILES and push["deleted"] == []
    # The run's own records stay local (W&B's run folder, the silenced tokens with their text, the pickled arguments).
    assert list((output_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (output_dir / "training_args.bin").exists() and (output_dir / "checkpoint-2").is_dir()

    card = card_of(root, repo_id)
    # A local model and local data (--dataset_path): named in the text, neither linked nor put in the metadata.
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.tags == ["trl", "grpo", "stapo", "stapo-trl"]
    assert card.data.eval_results is None
    assert "a fine-tuned version of a local model (`tiny-model" in card.text
    assert "trained on a local dataset with STAPO ([STAPO: Stabilizing" in card.text
    assert "| S2T (silence spurious tokens) | on |" in card.text and "| optimizer steps | 2 |" in card.text
    assert "author       = {Shiqi Liu and Zeyu He" in card.text
    assert f'pipeline("text-generation", model="{repo_id}"' in card.text
    config = (root / "repos" / repo_id / "training_config.yaml").read_text()
    assert "method: stapo\n" in config and "spurious_prob_threshold: 0.05\n" in config and "hub_token" not in config

    eval_argv = [
        "--model", str(output_dir), "--backend", "transformers", "--benchmarks", "aime24", "math500",
        "--benchmark_path", f"aime24={DATASETS / 'aime24.jsonl'}", f"math500={DATASETS / 'math500.jsonl'}",
        "--n", "2", "--max_new_tokens", "8", "--max_problems", "2", "--no_progress", "--hub_model_id", repo_id,
    ]  # fmt: skip
    before = len(fake_hub.calls(root))
    run("stapo-eval", eval_argv, hub_env(root), cwd=tmp_path)
    (results_file,) = (output_dir / "eval").glob("training*/eval_results.json")  # stapo-eval's default folder
    results = json.loads(results_file.read_text())
    (card_push,) = commits(root, repo_id)[1:]
    assert card_push["added"] == ["README.md"] and card_push["deleted"] == []  # the weights are not touched
    assert [call["operation"] for call in fake_hub.calls(root)[before:]] == [
        "whoami", "list_repo_files", "list_repo_files", "hf_hub_download", "create_commit"
    ]
    expected = [
        ("AIME24 (local copy)", "avg@2", "training", round(results["benchmarks"]["aime24"]["accuracy"], 2)),
        ("MATH500 (local copy)", "avg@2", "training", round(results["benchmarks"]["math500"]["accuracy"], 2)),
    ]
    for pushed in (card_of(root, repo_id), ModelCard.load(output_dir / "README.md")):  # the Hub's and the local card
        entries = pushed.data.eval_results  # parsed back from model-index by huggingface_hub
        assert [(e.dataset_name, e.metric_type, e.metric_config, e.metric_value) for e in entries] == expected
        assert entries[0].metric_args == {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8, "problems": 2}
        assert pushed.data.tags == card.data.tags and "## Evaluation\n\n| benchmark |" in pushed.text


def test_justrl_run_pushes_checkpoints_and_a_later_run_resumes_from_the_hub(fixture_model_dir, tmp_path):
    root, repo_id = tmp_path / "hub", "tester/justrl-tiny"
    argv = train_argv(
        fixture_model_dir, tmp_path / "run", "justrl", "--report_to", "none", "--push_to_hub", "--hub_model_id", repo_id,
        "--hub_strategy", "checkpoint",
    )  # fmt: skip
    run("stapo-train", argv, hub_env(root), cwd=tmp_path)

    pushes = commits(root, repo_id)
    checkpoint_pushes = [push for push in pushes if push["message"].endswith(", checkpoint")]
    folder_pushes = [push for push in pushes if push not in checkpoint_pushes]
    assert len(checkpoint_pushes) == 2 and len(folder_pushes) == 3  # at steps 1 and 2, and once at the end
    assert all(set(push["added"]) == MODEL_FILES for push in folder_pushes)
    for push in checkpoint_pushes:
        assert {"last-checkpoint/trainer_state.json", "last-checkpoint/model.safetensors"} <= set(push["added"])
        assert all(path.startswith("last-checkpoint/") for path in push["added"])
    assert folder_pushes[-1]["message"] == "End of training"

    card = card_of(root, repo_id)
    assert card.data.tags == ["trl", "grpo", "justrl", "stapo-trl"] and card.data.datasets is None
    assert "with JustRL ([JustRL: Scaling a 1.5B LLM" in card.text and "2602.15620" not in card.text
    assert "| S2T (silence spurious tokens) | off |" in card.text and "## Citation" not in card.text

    # A later run resumes from the pushed checkpoint: checked on the Hub before anything loads, then downloaded.
    resumed_dir = tmp_path / "resumed"
    argv = train_argv(fixture_model_dir, resumed_dir, "justrl", "--report_to", "none", "--max_steps", "3")
    run("stapo-train", [*argv, "--resume_from_checkpoint", f"hf://{repo_id}@main"], hub_env(root), cwd=tmp_path)
    downloads = [call for call in fake_hub.calls(root) if call["operation"] == "snapshot_download"]
    assert downloads == [{"operation": "snapshot_download", "repo_id": repo_id, "revision": "main",
                          "allow_patterns": ["last-checkpoint/*"]}]  # fmt: skip
    state = json.loads((resumed_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]

    missing = run(
        "stapo-train", [*argv, "--resume_from_checkpoint", f"hf://{repo_id}/checkpoint-7"], hub_env(root),
        cwd=tmp_path, expect=2,
    )  # fmt: skip
    assert missing.stderr.startswith(
        f"stapo-train: error: resume_from_checkpoint: hf://{repo_id}/checkpoint-7 does not exist (checkpoint folders "
        "there: last-checkpoint;"
    )
    assert not (tmp_path / "resumed" / "checkpoint-4").exists()


def parse(argv):
    """`stapo-train`'s reading, checks before TRL and parse of `argv`."""
    request = read_request(argv)
    check_request(request)
    return parse_request(request)


def test_training_config_reruns_the_same_settings(tmp_path):
    argv = ["--model", "Qwen/Qwen3-8B-Base", "--method", "grpo", "--learning_rate", "3e-6", "--max_steps", "7",
            "--output_dir", str(tmp_path / "run"), "--hub_token", "hf_secret", "--lora_r", "8"]  # fmt: skip
    first = parse(argv)
    path = tmp_path / hub.TRAINING_CONFIG_FILE
    hub.write_training_config(path, hub.training_config(first.script_args, first.args, first.model_args))
    assert "hf_secret" not in path.read_text()
    again = parse(["--config", str(path)])
    runs = [(run.script_args, run.args, run.model_args) for run in (first, again)]
    for before, after in zip(*runs, strict=True):
        settings = [getattr(arguments, "to_dict", lambda a=arguments: vars(a))() for arguments in (before, after)]
        expected, rerun = ({k: v for k, v in values.items() if not k.endswith("_token")} for values in settings)
        assert rerun == expected


def test_method_of_the_presets_and_the_upload_filter():
    from stapo_trl.arguments import METHOD_PRESETS

    for method in METHOD_PRESETS:
        assert hub.method_of(parse(["--model", "m/x", "--method", method]).args) == method
    assert hub.excluded_from_upload(False) == [
        "training_args.bin", "wandb/*", "spurious_tokens.jsonl", "eval_samples.jsonl", "*/eval_samples.jsonl"
    ]
    assert hub.excluded_from_upload(True) == ["training_args.bin"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hf://me/run", hub.HubCheckpoint("me/run", None, "last-checkpoint")),
        ("hf://me/run@v2", hub.HubCheckpoint("me/run", "v2", "last-checkpoint")),
        ("hf://me/run@main/checkpoint-200", hub.HubCheckpoint("me/run", "main", "checkpoint-200")),
        ("hf://me/run/checkpoint-200/", hub.HubCheckpoint("me/run", None, "checkpoint-200")),
    ],
)
def test_hub_checkpoint_names(value, expected):
    assert hub.parse_hub_checkpoint(value) == expected


def test_a_card_with_a_hub_base_model_and_eval_results_round_trips(tmp_path):
    """The card's metadata as huggingface_hub parses it back: base model, dataset, model-index."""
    from conftest import build_trainer

    from stapo_trl import STAPOConfig, STAPOTrainer

    eval_dir = tmp_path / "eval" / "justrl"
    eval_dir.mkdir(parents=True)
    results = json.loads((REPO / "tests" / "fixtures" / "eval" / "run_stapo.json").read_text())
    results["benchmarks"]["aime24"]["dataset"] = {"path": "HuggingFaceH4/aime_2024", "split": "train", "config": None}
    (eval_dir / "eval_results.json").write_text(json.dumps(results))
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, max_steps=1)
    trainer.model.config._name_or_path = "Qwen/Qwen3-1.7B-Base"
    trainer.create_model_card(model_name="stapo-1.7b", dataset_name="dapo-math-17k")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "Qwen/Qwen3-1.7B-Base" and card.data.datasets == [DAPO_ID]
    aime = card.data.eval_results[0]
    assert (aime.dataset_type, aime.dataset_name, aime.dataset_split) == ("HuggingFaceH4/aime_2024", "AIME24", "train")
    assert (aime.metric_type, aime.metric_config, aime.metric_value) == ("avg@32", "training", 17.4)
    assert len(card.data.eval_results) == len(results["benchmarks"])


def test_the_card_links_the_wandb_run_only_when_it_logs_online(tmp_path, monkeypatch):
    import types

    import wandb

    from conftest import build_trainer

    from stapo_trl import STAPOConfig, STAPOTrainer

    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, max_steps=1, silence_spurious_tokens=False,
                            loss_type="grpo")  # fmt: skip
    url = "https://wandb.ai/me/stapo/runs/abc123"
    for mode, linked in (("online", True), ("offline", False)):
        monkeypatch.setattr(wandb, "run", types.SimpleNamespace(url=url, settings=types.SimpleNamespace(mode=mode)))
        trainer.create_model_card()
        card = ModelCard.load(tmp_path / "README.md")
        assert (f"]({url})" in card.text) is linked
    # Inferred from the settings (no --method): GRPO, with TRL's reference for it and no STAPO tag or citation.
    assert card.data.tags == ["trl", "grpo", "stapo-trl"]
    assert "with GRPO ([DeepSeekMath" in card.text and "Cite GRPO as:" in card.text and "2602.15620" not in card.text


def test_the_upload_filter_applies_to_the_output_folder_only_and_is_undone(tmp_path, monkeypatch):
    import transformers.trainer as trainer_module

    sent = []

    class Api:
        def upload_folder(self, **kwargs):
            sent.append(kwargs)

    monkeypatch.setattr(trainer_module, "hf_api", Api)
    with hub.uploads_without(str(tmp_path), hub.excluded_from_upload(False)):
        trainer_module.hf_api().upload_folder(folder_path=str(tmp_path), ignore_patterns=["_*", "checkpoint-*"])
        trainer_module.hf_api().upload_folder(folder_path=str(tmp_path / "checkpoint-1"), path_in_repo="last-checkpoint")
    assert sent == [
        {"folder_path": str(tmp_path), "ignore_patterns": ["_*", "checkpoint-*", *hub.excluded_from_upload(False)]},
        {"folder_path": str(tmp_path / "checkpoint-1"), "ignore_patterns": None, "path_in_repo": "last-checkpoint"},
    ]
    assert trainer_module.hf_api is Api
