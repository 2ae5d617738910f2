"""Benchmark accuracy during training: a `TrainerCallback` that runs a small avg@n evaluation every N steps.

    trainer = STAPOTrainer(...)
    trainer.add_callback(BenchmarkEvalCallback(trainer, benchmarks=("aime24", "math500"), eval_steps=20))
    trainer.train()

It evaluates the trainer's own model (unwrapped; gathered under DeepSpeed ZeRO-3, like TRL's generation; in eval
mode and back to train mode after) with the transformers backend of `stapo_trl.evaluation`, the training prompt
and the grading of the training reward, and logs `eval/<benchmark>/avg@<n>` and `eval/<benchmark>/mean_num_tokens`
through `transformers.Trainer.log`, so the values land in `trainer.state.log_history` and in every reporter (W&B
shows them as `train/eval/<benchmark>/avg@<n>`, as it prefixes keys that do not start with `eval_`).
`transformers.Trainer.log` is called rather than the trainer's own `log` so that `GRPOTrainer`'s averaged training
metrics are neither flushed early nor mixed in.
The last results are also kept as a results document in `<output_dir>/eval/during-training/eval_results.json`,
from which the model card takes them (`stapo_trl.hub`: its Evaluation section and `model-index` metadata).

Several processes: each rank generates for its own shard of the problems (problem i goes to rank i % world size),
then one `accelerator.reduce` (sum) of (sum of per-problem accuracies, problems, tokens, samples) per benchmark
gives every rank the same global numbers, and every rank logs them (only the main process reports to W&B, as
usual). All ranks run the callback at the same steps, so the collectives (ZeRO-3 gathering, the reduce) match.
Generation is local to each rank, so ranks with more problems simply finish later. FSDP is not supported (its
sharded forward passes would have to run in lockstep).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from .evaluation import (
    EVAL_SUBDIR,
    BenchmarkTask,
    Generator,
    SamplingParams,
    TransformersGenerator,
    build_results,
    default_pass_k,
    run_evaluation,
    write_results,
)

logger = logging.getLogger(__name__)
# Where the last in-training results are kept (and read by the model card, like `stapo-eval`'s runs in `eval/*/`).
LAST_RESULTS_DIR = f"{EVAL_SUBDIR}/during-training"


class BenchmarkEvalCallback(TrainerCallback):
    """Evaluate `benchmarks` every `eval_steps` optimizer steps (and at step 0 with `eval_on_start`).

    Args:
        trainer: the trainer whose model is evaluated and whose loggers receive the metrics.
        benchmarks: keys of `stapo_trl.data.BENCHMARKS`, loaded with `load_benchmark` (+ `dataset_overrides`:
            benchmark -> {path, split, config, question_column, answer_column}).
        eval_steps: evaluate when `global_step % eval_steps == 0`.
        n: samples per problem (small: this is a training signal, not the paper's protocol).
        max_new_tokens: generation budget per sample.
        max_problems: the first problems of each benchmark only (`None`: all).
        temperature, top_p: decoding (default: the training decoding, 1.0 / 1.0).
        batch_size: prompts per `generate` call; `max_batch_sequences`: sequences per `model.generate`.
        tasks: ready-made `BenchmarkTask`s instead of `benchmarks` (their `n` is used as is).
        seed: base seed (varied with step and rank); the training RNG state is not touched.
        chat_template_kwargs: defaults to the trainer's `args.chat_template_kwargs` when it has one.
        generator_factory: `(unwrapped_model, tokenizer) -> Generator`, the backend; default a
            `TransformersGenerator` with `max_batch_sequences` and `chat_template_kwargs`.
    """

    def __init__(
        self,
        trainer: Trainer,
        benchmarks: Sequence[str] = ("math500",),
        *,
        eval_steps: int = 100,
        n: int = 4,
        max_new_tokens: int = 1024,
        max_problems: int | None = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 16,
        max_batch_sequences: int = 64,
        dataset_overrides: Mapping[str, Mapping[str, str]] | None = None,
        tasks: Sequence[BenchmarkTask] | None = None,
        eval_on_start: bool = False,
        seed: int = 0,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        generator_factory: Callable[[Any, Any], Generator] | None = None,
    ):
        if eval_steps <= 0:
            raise ValueError(f"eval_steps must be a positive integer, got {eval_steps}")
        if n <= 0:
            raise ValueError(f"n must be a positive integer, got {n}")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
        if max_problems is not None and max_problems <= 0:
            raise ValueError(f"max_problems must be a positive integer or None, got {max_problems}")
        self.trainer = trainer
        self.eval_steps = eval_steps
        self.n = n
        self.max_new_tokens = max_new_tokens
        self.max_problems = max_problems
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.max_batch_sequences = max_batch_sequences
        self.eval_on_start = eval_on_start
        self.seed = seed
        if chat_template_kwargs is None:
            chat_template_kwargs = getattr(trainer.args, "chat_template_kwargs", None)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.generator_factory = generator_factory or self._transformers_generator
        if tasks is not None:
            self.tasks = list(tasks)
        else:
            self.tasks = self._load_tasks(benchmarks, dict(dataset_overrides or {}))
        self._last_step = None

    def _load_tasks(self, benchmarks, dataset_overrides) -> list[BenchmarkTask]:
        from .data import BENCHMARKS, load_benchmark, resolve_benchmark_spec

        unknown = [b for b in benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(f"benchmarks: unknown {unknown}; accepted: {', '.join(BENCHMARKS)}")
        tasks = []
        with self.trainer.accelerator.main_process_first():
            for name in benchmarks:
                overrides = dict(dataset_overrides.get(name, {}))
                spec = resolve_benchmark_spec(name, **overrides)
                dataset = load_benchmark(name, **overrides)
                if self.max_problems is not None and self.max_problems < len(dataset):
                    dataset = dataset.select(range(self.max_problems))
                tasks.append(
                    BenchmarkTask(
                        name,
                        list(dataset["prompt"]),
                        [str(a) for a in dataset["answer"]],
                        n=self.n,
                        metadata={"dataset": {"path": spec.path, "config": spec.config, "split": spec.split}},
                    )
                )
        return tasks

    # -- events ------------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        if self.eval_on_start:
            self._log(self.evaluate(state.global_step), state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._log(self.evaluate(state.global_step), state.global_step)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._last_step == step:
            return
        self._last_step = step
        # The base class's `log`: it appends to `state.log_history` and calls every reporter's `on_log`.
        Trainer.log(self.trainer, dict(metrics))
        if self.trainer.is_world_process_zero():
            write_results(self.results_document(metrics, step), Path(self.trainer.args.output_dir) / LAST_RESULTS_DIR)

    def results_document(self, metrics: dict[str, float], step: int) -> dict[str, Any]:
        """The metrics of `evaluate` as a `stapo-eval` results document, for the model card (`stapo_trl.hub`)."""
        benchmarks = {}
        for task in self.tasks:
            accuracy = metrics[f"eval/{task.name}/avg@{task.n}"]
            benchmarks[task.name] = {
                "n": task.n,
                "accuracy": accuracy,
                f"avg@{task.n}": accuracy,
                "num_problems": len(task.prompts),
                "mean_num_tokens": metrics[f"eval/{task.name}/mean_num_tokens"],
                **task.metadata,
            }
        settings = {
            "decoding": f"in-training, temperature {self.temperature}, top-p {self.top_p}",
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
        }
        metadata = {
            "run_name": f"in-training evaluation at step {step}",
            "model": self.trainer.args.output_dir,
            "evaluated_at_step": step,
        }
        return build_results(benchmarks, settings=settings, metadata=metadata)

    # -- the evaluation ------------------------------------------------------------------------------------------

    def _transformers_generator(self, model, tokenizer) -> TransformersGenerator:
        return TransformersGenerator(
            model,
            tokenizer,
            max_batch_sequences=self.max_batch_sequences,
            chat_template_kwargs=self.chat_template_kwargs,
        )

    def evaluate(self, step: int = 0) -> dict[str, float]:
        """Run the evaluation on this process's shard, reduce over processes, return the metrics (all ranks)."""
        import torch
        from trl.models import unwrap_model_for_generation

        trainer = self.trainer
        accelerator = trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        start = time.perf_counter()
        sums = torch.zeros(len(self.tasks), 4, dtype=torch.float64)
        params = SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed + 1_000_003 * rank + 7_919 * step,
        )
        model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
        with unwrap_model_for_generation(model, accelerator, gather_deepspeed3_params=True) as unwrapped:
            generator = self.generator_factory(unwrapped, trainer.processing_class)
            for index, task in enumerate(self.tasks):
                shard = list(range(rank, len(task.prompts), world))
                if not shard:
                    continue
                local = BenchmarkTask(
                    task.name, [task.prompts[i] for i in shard], [task.answers[i] for i in shard], n=task.n
                )
                scores = run_evaluation(
                    generator, [local], params, pass_k=default_pass_k(task.n), batch_size=self.batch_size,
                    progress=False,
                )["benchmarks"][task.name]
                problems, samples = scores["num_problems"], scores["num_samples"]
                sums[index] = torch.tensor(
                    [scores["accuracy"] / 100.0 * problems, problems, scores["mean_num_tokens"] * samples, samples],
                    dtype=torch.float64,
                )
        if world > 1:
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        metrics: dict[str, float] = {}
        for task, (accuracy_sum, problems, tokens, samples) in zip(self.tasks, sums.tolist(), strict=True):
            metrics[f"eval/{task.name}/avg@{task.n}"] = 100.0 * accuracy_sum / problems
            metrics[f"eval/{task.name}/mean_num_tokens"] = tokens / samples
        metrics["eval/benchmark_runtime_s"] = time.perf_counter() - start
        return metrics
