"""Every mistake a user can make with `stapo-train` ends in one line, before anything expensive: one row per mistake.

Each row runs the command in an empty working directory outside the clone, offline, with an empty Hugging Face
cache, and asserts the one-line message (field, value, what is accepted), exit code 2, an empty stdout, and that the
working directory, the output_dir and the cache hold afterwards exactly what they held before. Offline, a check that
came after the first Hub access would end in the Hub's error instead of its own message. A row marked `BEFORE_TRL`
must also fail before torch, transformers or TRL is imported (seconds of start-up).

The dry runs that pass come after the table: the paper's 8-GPU arithmetic on this CPU machine, with nothing downloaded.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "datasets" / "dapo-math-17k.jsonl"
# `stapo-train` as its console script runs it, noting which heavy modules were imported by the time it exited (in a
# file outside the working directory); vLLM hidden the way an environment without it looks to `find_spec`.
ENTRY = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["STAPO_TEST_IMPORTS"], "w").write(
    json.dumps(sorted(name for name in ("torch", "transformers", "trl") if name in sys.modules))))
sys.modules["vllm"] = None
from stapo_trl.cli import main
main(sys.argv[1:])
"""
HUB_MODEL = ["--model", "Qwen/Qwen3-8B-Base"]  # a Hub id, never downloaded: each check fails first
ON_CPU = ["--use_cpu", "true"]
BEFORE_TRL = "before TRL"

# Files a row's working directory starts with.
FILES = {
    "a_file": "",
    "no_answer.jsonl": json.dumps({"problem": "What is 1+1?", "solution": "2"}) + "\n",
    "empty.jsonl": "",
    "no_question.jsonl": json.dumps({"problem": " ", "answer": "2"}) + "\n",
    "empty_answer.jsonl": json.dumps({"problem": "What is 1+1?", "answer": ""}) + "\n",
    "question_as_answer.jsonl": "".join(
        json.dumps({"problem": question, "answer": question}) + "\n"
        for question in ("What is the sum of two and two?", "Compute the area of the triangle.")
    ),
    "bad_line.jsonl": json.dumps({"problem": "What is 1+1?", "answer": "2"}) + "\n{not json\n",
    "model_without_config/weights.bin": "",
    "malformed.yaml": "model_name_or_path: Qwen/Qwen3-8B-Base\nlearning_rate: [1e-6\n",
    "unknown_key.yaml": "model_name_or_path: Qwen/Qwen3-8B-Base\nmethod: stapo\nlearning_rat: 1.0e-6\n",
    "a_list.yaml": "- model_name_or_path: Qwen/Qwen3-8B-Base\n",
    "mixture.yaml": "model_name_or_path: Qwen/Qwen3-8B-Base\ndatasets:\n  - path: trl-lib/DeepMath-103K\n"
    "  - path: open-r1/DAPO-Math-17k-Processed\n    name: all\n",
    "reward_funcs.yaml": "model_name_or_path: Qwen/Qwen3-8B-Base\nreward_funcs: [think_format_reward]\n",
    "streaming.yaml": "model_name_or_path: Qwen/Qwen3-8B-Base\ndataset_streaming: true\n",
}

# name: (command line, message, the check runs before TRL is imported)
CHECKS = {
    # the seven of the first tries
    "local dataset without the answer column": (
        [*HUB_MODEL, "--dataset_name", "./no_answer.jsonl"],
        "The answer column 'answer' is missing from dataset './no_answer.jsonl' [./no_answer.jsonl, split 'train']; "
        "available columns: ['problem', 'solution']. Choose another with answer_column=...",
        BEFORE_TRL,
    ),
    "empty dataset file": (
        [*HUB_MODEL, "--dataset_name", "./empty.jsonl"],
        "dataset './empty.jsonl' [./empty.jsonl, split 'train'] has no rows; accepted: a dataset with one problem "
        "per row.",
        BEFORE_TRL,
    ),
    "local model path that does not exist": (
        ["--model", "./models/qwen3"],
        "model_name_or_path: no such local folder './models/qwen3' (it looks like a path, not a Hub id); accepted: a "
        "folder saved with save_pretrained, or a Hub model id (owner/name).",
        BEFORE_TRL,
    ),
    "output_dir in /proc": (
        [*HUB_MODEL, "--output_dir", "/proc/stapo"],
        "output_dir '/proc/stapo' is not writable: no folder can be created in '/proc' (",
        BEFORE_TRL,
    ),
    "zero batch size": (
        [*HUB_MODEL, "--per_device_train_batch_size", "0"],
        "per_device_train_batch_size must be a positive number of completions, got 0.",
        BEFORE_TRL,
    ),
    "method stapo with S2T off": (
        [*HUB_MODEL, "--method", "stapo", "--silence_spurious_tokens", "false"],
        "silence_spurious_tokens=false contradicts method stapo (STAPO is S2T on); accepted: true, or --method justrl "
        "for the same recipe without S2T.",
        BEFORE_TRL,
    ),
    "quantile 0": (
        [*HUB_MODEL, "--spurious_entropy_quantile", "0"],
        "spurious_entropy_quantile=0 silences no token (no entropy is below the smallest candidate's): accepted "
        "values are in (0, 1] (the paper uses 0.75); to train without S2T use --method justrl.",
        BEFORE_TRL,
    ),
    "misspelt --model": (
        ["--modle", "Qwen/Qwen3-8B-Base"],
        "unknown option --modle: did you mean --model? (model_name_or_path (or --model) is required)",
        BEFORE_TRL,
    ),
    "unknown recipe key": (
        ["--config", "unknown_key.yaml"],
        "unknown_key.yaml line 3: unknown key 'learning_rat'; did you mean learning_rate? (stapo-train --help-all "
        "lists every setting)",
        None,
    ),
    "malformed recipe": (
        ["--config", "malformed.yaml"],
        "--config malformed.yaml: not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'.",
        BEFORE_TRL,
    ),
    # more sizes, counts and contradictions
    "negative gradient accumulation": (
        [*HUB_MODEL, "--gradient_accumulation_steps=-4"],
        "gradient_accumulation_steps must be a positive number of micro-batches, got -4.",
        BEFORE_TRL,
    ),
    "zero generations per prompt": (
        [*HUB_MODEL, "--num_generations", "0"],
        "num_generations must be a positive number of completions per prompt, got 0.",
        BEFORE_TRL,
    ),
    "zero max_steps": (
        [*HUB_MODEL, "--max_steps", "0"],
        "max_steps must be a positive number of optimizer steps (or -1: num_train_epochs decides), got 0.",
        BEFORE_TRL,
    ),
    "zero temperature": (
        [*HUB_MODEL, "--temperature", "0"], "temperature must be a positive sampling temperature, got 0.0.", BEFORE_TRL
    ),
    "top_p above 1": ([*HUB_MODEL, "--top_p", "1.5"], "top_p must be in (0, 1], got 1.5.", BEFORE_TRL),
    "zero max_completion_length": (
        [*HUB_MODEL, "--max_completion_length", "0"],
        "max_completion_length must be a positive number of tokens, got 0.",
        BEFORE_TRL,
    ),
    "zero max_prompt_length": (
        [*HUB_MODEL, "--max_prompt_length", "0"],
        "max_prompt_length must be a positive number of tokens, got 0.",
        BEFORE_TRL,
    ),
    "negative warm-up": ([*HUB_MODEL, "--warmup_steps=-1"], "warmup_steps must be >= 0, got -1.0.", BEFORE_TRL),
    "zero num_processes": (
        [*HUB_MODEL, "--num_processes", "0"],
        "num_processes must be a positive number of processes, got 0.",
        BEFORE_TRL,
    ),
    "method justrl with S2T on": (
        [*HUB_MODEL, "--method", "justrl", "--silence_spurious_tokens", "true"],
        "silence_spurious_tokens=true contradicts method justrl (S2T off); accepted: false, or --method stapo for S2T.",
        BEFORE_TRL,
    ),
    "non-positive learning rate": (
        [*HUB_MODEL, "--learning_rate=-1e-6"], "learning_rate must be > 0, got -1e-06.", BEFORE_TRL
    ),
    "zero learning rate": ([*HUB_MODEL, "--learning_rate", "0"], "learning_rate must be > 0, got 0.0.", BEFORE_TRL),
    "tau_p of 0": (
        [*HUB_MODEL, "--spurious_prob_threshold", "0"],
        "spurious_prob_threshold must be in (0, 1], got 0.0. The paper uses 0.002.",
        BEFORE_TRL,
    ),
    "unknown loss": (
        [*HUB_MODEL, "--loss_type", "ppo"],
        "loss_type must be one of dapo, grpo, bnpo, dr_grpo, cispo, sapo, luspo, vespo, got 'ppo'.",
        BEFORE_TRL,
    ),
    "unknown reward": ([*HUB_MODEL, "--reward", "f1"], "reward must be one of boxed, accuracy, got 'f1'.", BEFORE_TRL),
    "unknown benchmark": (
        [*HUB_MODEL, "--eval_benchmarks", "gsm8k"], "eval_benchmarks: unknown ['gsm8k']; accepted: aime24,", BEFORE_TRL
    ),
    "unknown method": (
        [*HUB_MODEL, "--method", "ppo"], "method must be one of stapo, justrl, entropy20, grpo, got 'ppo'.", BEFORE_TRL
    ),
    "no model": (["--method", "stapo"], "model_name_or_path (or --model) is required, e.g. --model", BEFORE_TRL),
    "unknown option": (
        [*HUB_MODEL, "--learning_rat", "1e-6"],
        "unknown option --learning_rat; did you mean --learning_rate? (stapo-train --help-all lists them all)",
        None,
    ),
    "a value without an option": (
        ["Qwen/Qwen3-8B-Base"],
        "'Qwen/Qwen3-8B-Base' is not an option: options start with -- (stapo-train --help lists them).",
        BEFORE_TRL,
    ),
    # the data: paths and the first rows
    "local dataset path that does not exist": (
        [*HUB_MODEL, "--dataset_name", "data/my_train.jsonl"],
        "dataset_name: no such local file or folder 'data/my_train.jsonl' (it looks like a path, not a Hub id); "
        "accepted: an existing path, a Hub dataset id (owner/name) or one of",
        BEFORE_TRL,
    ),
    "unknown dataset name": ([*HUB_MODEL, "--dataset_name", "dapo-math-18k"], "dapo-math-18k", BEFORE_TRL),
    "empty question": (
        [*HUB_MODEL, "--dataset_name", "./no_question.jsonl"],
        "question_column 'problem' of dataset './no_question.jsonl' [./no_question.jsonl, split 'train'] is empty in "
        "row 0; accepted: a column holding each problem's text (choose it with question_column=...).",
        BEFORE_TRL,
    ),
    "empty answer": (
        [*HUB_MODEL, "--dataset_name", "./empty_answer.jsonl"],
        "answer_column 'answer' of dataset './empty_answer.jsonl' [./empty_answer.jsonl, split 'train'] is empty in "
        "row 0; accepted: a column holding each problem's final answer",
        BEFORE_TRL,
    ),
    "answers that are not math": (
        [*HUB_MODEL, "--dataset_name", "./question_as_answer.jsonl"],
        "answer_column 'answer' of dataset './question_as_answer.jsonl' [./question_as_answer.jsonl, split 'train']: "
        "math-verify reads no mathematical expression in the first 2 answers (row 0: 'What is the sum of two and two?')",
        BEFORE_TRL,
    ),
    "a line that is not JSON": (
        [*HUB_MODEL, "--dataset_name", "./bad_line.jsonl"],
        "dataset file ./bad_line.jsonl: line 2 is not valid JSON (Expecting property name enclosed in double quotes).",
        BEFORE_TRL,
    ),
    "model folder without config.json": (
        ["--model", "./model_without_config"],
        "model_name_or_path: './model_without_config' has no config.json, so it is not a saved model",
        BEFORE_TRL,
    ),
    # the environment and the run's files
    "output_dir below a file": (
        [*HUB_MODEL, "--output_dir", "a_file/run"],
        "output_dir 'a_file/run' is not writable: ",
        BEFORE_TRL,
    ),
    "use_vllm without vLLM installed": (
        [*HUB_MODEL, *ON_CPU, "--use_vllm", "true"],
        'use_vllm=True but vLLM is not installed: pip install "vllm',
        BEFORE_TRL,
    ),
    "a model on a machine without CUDA": (
        HUB_MODEL,
        "model_name_or_path='Qwen/Qwen3-8B-Base' needs a GPU and this machine has none (no CUDA device visible); "
        "run the CPU demo instead: stapo-train --config demo_cpu",
        None,
    ),
    "resume without a checkpoint": (
        [*HUB_MODEL, *ON_CPU, "--resume_from_checkpoint", "true"],
        "resume_from_checkpoint=true but 'outputs/Qwen3-8B-Base/stapo' has no checkpoint-* folder.",
        None,
    ),
    "push_to_hub offline": (
        [*HUB_MODEL, *ON_CPU, "--push_to_hub", "true", "--hub_model_id", "me/stapo"],
        "push_to_hub is set but HF_HUB_OFFLINE=1: the Hub cannot be reached. Unset it.",
        None,
    ),
    # recipes, ours and TRL's
    "missing recipe file": (
        ["--config", "recipes/nope.yaml"],
        "--config: no such recipe file 'recipes/nope.yaml' and no shipped recipe of that name; shipped recipes: "
        "demo_cpu, qwen3-1.7b/entropy20,",
        BEFORE_TRL,
    ),
    "a recipe that is not a mapping": (
        ["--config", "a_list.yaml"],
        "--config a_list.yaml: a recipe is a YAML mapping of settings (key: value), got a list.",
        BEFORE_TRL,
    ),
    "TRL dataset mixture": (
        ["--config", "mixture.yaml"],
        "datasets: dataset mixtures are not supported: stapo-train trains on one dataset; give it with dataset_name",
        BEFORE_TRL,
    ),
    "TRL reward function without a counterpart": (
        ["--config", "reward_funcs.yaml"],
        "reward_funcs ['think_format_reward']: stapo-train trains with one rule-based reward, reward: boxed",
        BEFORE_TRL,
    ),
    "TRL streaming": (
        ["--config", "streaming.yaml"],
        "dataset_streaming: true is not supported: stapo-train filters the prompts by length over the whole dataset "
        "before training; accepted: false.",
        BEFORE_TRL,
    ),
    # a dry run checks the same (content included)
    "dry run: local dataset without the answer column": (
        ["--dry-run", *HUB_MODEL, "--dataset_name", "./no_answer.jsonl"],
        "The answer column 'answer' is missing from dataset './no_answer.jsonl'",
        BEFORE_TRL,
    ),
    "dry run: S2T contradiction": (
        ["--dry-run", "--config", "qwen3-8b/stapo", "--silence_spurious_tokens", "false"],
        "silence_spurious_tokens=false contradicts method stapo",
        BEFORE_TRL,
    ),
    "dry run: missing accelerate config": (
        ["--dry-run", *HUB_MODEL, "--accelerate_config_file", "zero9.yaml"],
        "accelerate_config_file: no such file 'zero9.yaml' and no shipped accelerate config 'zero9.yaml'; shipped: ",
        BEFORE_TRL,
    ),
}


def stapo_train(argv, cwd, *, entry=("-c", ENTRY), env=None):
    """`stapo-train argv` in `cwd`, offline, with an empty Hugging Face cache and no GPU; returns the completed
    process and the heavy modules it had imported."""
    imports = cwd.parent / f"{cwd.name}-imports.json"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "WANDB_", "STAPO_"))}
    environment.update(
        HF_HOME=str(cwd / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        CUDA_VISIBLE_DEVICES="",  # the machine without a GPU, on any machine
        PYTHONPATH=str(ROOT),
        STAPO_TEST_IMPORTS=str(imports),
        **(env or {}),
    )
    command = [*entry, *argv] if entry[0] != "-c" else [sys.executable, *entry, *argv]
    completed = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    return completed, json.loads(imports.read_text()) if imports.exists() else None


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(("argv", "message", "before_trl"), CHECKS.values(), ids=CHECKS.keys())
def test_bad_input_ends_in_one_line_before_anything_is_downloaded_or_written(argv, message, before_trl, tmp_path):
    work = tmp_path / "work"
    for name, text in FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    before = files_under(work)
    completed, imported = stapo_train(argv, work)
    assert completed.returncode == 2, completed.stderr[-3000:]
    assert completed.stdout == ""
    error = completed.stderr.strip()
    assert error.startswith("stapo-train: error: ") and "\n" not in error, error
    assert message in error
    assert error.endswith("(--debug shows the traceback)")
    assert files_under(work) == before  # no output_dir, no Hugging Face cache, nothing else
    if before_trl:
        assert imported == [], f"imported before the check failed: {imported}"


def test_debug_shows_the_traceback(tmp_path):
    completed, _ = stapo_train([*HUB_MODEL, "--learning_rate=-1e-6", "--debug"], tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.startswith("Traceback (most recent call last):")
    assert "learning_rate must be > 0" in completed.stderr


def test_help_all_into_a_closed_pipe_exits_quietly(tmp_path):
    script = shutil.which("stapo-train", path=str(Path(sys.executable).parent))
    completed = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{script}" --help-all 2>stderr.txt | head -1'],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert completed.stdout.startswith("usage: stapo-train")
    assert (tmp_path / "stderr.txt").read_text() == ""


# ----------------------------------------------------------------------------------------------------------------
# dry runs that pass, on this CPU machine, offline, with the console script from outside the clone
# ----------------------------------------------------------------------------------------------------------------


def dry_run(argv, tmp_path, env=None):
    script = shutil.which("stapo-train", path=str(Path(sys.executable).parent))
    completed, _ = stapo_train(["--dry-run", *argv], tmp_path, entry=(script,), env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines()[-1] == "All checks passed; nothing was downloaded or written (--dry-run)."
    assert files_under(tmp_path) == []
    return completed.stdout


def test_dry_run_of_a_hub_model_shows_the_paper_node(tmp_path):
    # HF_HUB_OFFLINE=1 is set for every run here; the Hub address does not even resolve
    out = dry_run(HUB_MODEL, tmp_path, env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert "model               Qwen/Qwen3-8B-Base" in out
    assert "processes           8 (the paper's node of 8 GPUs; --num_processes N for another; this machine runs " \
           "1), bf16 where the GPUs have it (fp32 on this machine)" in out  # fmt: skip
    assert "per optimizer step  64 prompts = 512 completions (1 per device x 8 x 64 accumulation)" in out
    assert "updates/generation  4 (x num_iterations 1)" in out
    assert "not checked here: a GPU for Qwen/Qwen3-8B-Base (this machine has no CUDA device)" in out
    assert "warning" not in out  # the paper recipe rescales the accumulation to the processes


@pytest.mark.parametrize("model", ["qwen3-8b", "qwen3-14b"])
def test_dry_run_of_a_gpu_recipe_shows_its_8_gpus_and_warns_on_1(model, tmp_path):
    out = dry_run(["--config", f"{model}/stapo"], tmp_path)
    assert "processes           8 (the recipe's num_processes; this machine runs 1), bf16" in out
    assert "per generation      256 prompts x 8 = 2048 completions = steps_per_generation 256 x 1 per device x 8" in out
    assert "per optimizer step  64 prompts = 512 completions (1 per device x 8 x 64 accumulation)" in out
    assert "updates/generation  4 (x num_iterations 1)" in out
    assert "rollouts            vLLM colocate" in out
    assert "warning: launched as here (1 process), an update would be 64 completions (8 prompts), not the 512 (64 " \
           "prompts, the paper's) of 8 processes" in out  # fmt: skip
    assert "not checked here: bf16: the GPUs of the run must support it (this machine has no CUDA device)" in out


def test_dry_run_on_the_processes_asked_for(tmp_path):
    out = dry_run([*HUB_MODEL, "--num_processes", "4"], tmp_path)
    assert "per optimizer step  64 prompts = 512 completions (1 per device x 4 x 128 accumulation)" in out
    out = dry_run(["--config", "qwen3-8b/stapo", "--accelerate_config_file", "multi_node_zero3"], tmp_path)
    assert "16 (num_processes of multi_node_zero3; this machine runs 1)" in out
    assert "per optimizer step  128 prompts = 1024 completions (1 per device x 16 x 64 accumulation)" in out


def test_dry_run_of_a_trl_grpo_config(tmp_path):
    """A config written for `trl grpo` (TRL's dataset keys and reward name) means the same under `stapo-train`."""
    config = tmp_path.parent / "trl_grpo.yaml"
    config.write_text(
        "model_name_or_path: Qwen/Qwen3-8B-Base\n"
        f"dataset_name: {FIXTURE}\n"
        "dataset_config: null\n"
        "dataset_train_split: train\n"
        "dataset_test_split: test\n"
        "dataset_streaming: false\n"
        "reward_funcs: [accuracy_reward]\n"
        "learning_rate: 1.0e-6\n"
        "num_generations: 8\n"
        "per_device_train_batch_size: 8\n"
        "gradient_accumulation_steps: 8\n"
        "use_vllm: false\n"
        "output_dir: grpo-run\n"
    )
    out = dry_run(["--config", str(config), "--question_column", "prompt", "--answer_column", "solution"], tmp_path)
    assert f"dataset             {FIXTURE} (split 'train'), reward accuracy" in out
    assert "per optimizer step  64 prompts = 512 completions (8 per device x 8 x 8 accumulation)" in out
    assert "output_dir          grpo-run" in out
