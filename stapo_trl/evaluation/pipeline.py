"""The `stapo-eval` run from a model name or path to the files: check everything that can fail before the model is
loaded (`prepare_evaluation`), then build the backend and evaluate (`evaluate_model`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import EvalConfig, resolve_model_revision, settings_fingerprint
from .data_parallel import DataParallelGenerator
from .generators import Generator, TransformersGenerator, VLLMGenerator, vllm_available
from .prompts import format_prompt
from .protocol import EVAL_SAMPLES_FILE
from .run import BenchmarkTask, run_evaluation
from .store import SampleStore, to_jsonable


def load_tasks(config: EvalConfig) -> list[BenchmarkTask]:
    """The selected benchmarks, loaded with `stapo_trl.data.load_benchmark` (prompts built with `build_prompt`)."""
    from ..data import load_benchmark, resolve_benchmark_spec

    tasks = []
    for name in config.benchmarks:
        overrides = dict(config.dataset_overrides.get(name, {}))
        spec = resolve_benchmark_spec(name, **overrides)
        dataset = load_benchmark(name, **overrides)
        total = len(dataset)
        if config.max_problems is not None and config.max_problems < total:
            dataset = dataset.select(range(config.max_problems))
        tasks.append(
            BenchmarkTask(
                name=name,
                prompts=list(dataset["prompt"]),
                answers=[str(a) for a in dataset["answer"]],
                n=config.samples_per_problem(name),
                metadata={
                    "dataset": {k: v for k, v in to_jsonable(spec).items() if k != "notes"},
                    "total_problems": total,
                },
            )
        )
    return tasks


def check_resume_compatible(output_dir: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raise `ResumeError` now (before any model is loaded) if `output_dir` holds samples of other settings."""
    samples = Path(output_dir) / EVAL_SAMPLES_FILE
    if samples.exists() and samples.stat().st_size > 0:
        SampleStore(output_dir, settings)  # the constructor checks


def build_generator(config: EvalConfig, model_revision: str, tokenizer=None) -> Generator:
    """The backend of `config`: vLLM (data parallel through worker processes when `data_parallel_size > 1`) or
    transformers."""
    revision = None if model_revision in ("local", "unknown") else model_revision
    if config.resolved_backend() == "vllm":
        import functools

        factory = functools.partial(
            VLLMGenerator,
            config.model,
            revision=revision,
            tensor_parallel_size=config.tensor_parallel_size,
            dtype=config.dtype,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            chat_template_kwargs=config.chat_template_kwargs,
        )
        if config.data_parallel_size == 1:
            return factory()
        return DataParallelGenerator(
            factory, config.data_parallel_size, devices_per_worker=config.tensor_parallel_size
        )
    return TransformersGenerator.from_pretrained(
        config.model,
        revision=revision,
        dtype=config.dtype,
        trust_remote_code=config.trust_remote_code,
        tokenizer=tokenizer,
        max_batch_sequences=config.max_batch_sequences,
        chat_template_kwargs=config.chat_template_kwargs,
    )


@dataclass
class PreparedEvaluation:
    """What `prepare_evaluation` found out, before any model is loaded."""

    config: EvalConfig
    backend: str
    model_revision: str
    output_dir: str
    settings: dict[str, Any]
    tasks: list[BenchmarkTask]
    tokenizer: Any
    format_prompt_fn: Callable[[Any], str]
    pending_samples: int  # samples still to generate (0: the results can be rebuilt without a model)


def prepare_evaluation(config: EvalConfig, tokenizer=None) -> PreparedEvaluation:
    """Everything that can fail before a model is loaded, in order: backend availability, the model revision, the
    output directory's settings, the benchmarks (loaded), the tokenizer (unless given) and the rendered prompts
    checked against the stored samples. Raises `ValueError` (bad flags or data), `ResumeError` or `OSError`."""
    if config.model is None:
        raise ValueError("--model is required")
    backend = config.resolved_backend()
    if backend == "vllm" and not vllm_available():
        raise ValueError(
            "--backend vllm: vLLM is not installed (pip install 'stapo-trl[vllm]'); accepted without it: auto, "
            "transformers"
        )
    if backend == "transformers" and config.data_parallel_size > 1:
        raise ValueError("--data_parallel_size > 1 needs --backend vllm")
    revision = resolve_model_revision(config.model, config.revision)
    output_dir = config.resolved_output_dir()
    settings = settings_fingerprint(config, revision)
    check_resume_compatible(output_dir, settings)
    tasks = load_tasks(config)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            config.model,
            revision=None if revision in ("local", "unknown") else revision,
            trust_remote_code=config.trust_remote_code,
        )
    chat_template_kwargs = config.chat_template_kwargs

    def format_fn(prompt):
        return format_prompt(prompt, tokenizer, chat_template_kwargs)

    store = SampleStore(output_dir, settings)
    pending = 0
    for task in tasks:
        for problem, (prompt, gold) in enumerate(zip(task.prompts, task.answers, strict=True)):
            store.check_problem(task.name, problem, format_fn(prompt), str(gold))
            pending += sum((task.name, problem, s) not in store.records for s in range(task.n))
    return PreparedEvaluation(config, backend, revision, output_dir, settings, tasks, tokenizer, format_fn, pending)


class _NothingToGenerate:
    """The generator of a finished run: the results are rebuilt from the stored samples, no model is loaded."""

    def generate(self, prompts, n, params):
        raise RuntimeError("every sample is already in the output directory; nothing should be generated")


def evaluate_model(
    config: EvalConfig | PreparedEvaluation, generator: Generator | None = None
) -> dict[str, Any]:
    """The `stapo-eval` run: `prepare_evaluation` (unless given its result), then load the backend, evaluate and
    write the files (see the module docstring). `generator` replaces the backend (tests, custom backends); its
    prompts are rendered with the model's tokenizer as in training."""
    prepared = config if isinstance(config, PreparedEvaluation) else prepare_evaluation(config)
    config = prepared.config
    owns_generator = generator is None
    if generator is None and prepared.pending_samples == 0:
        generator = _NothingToGenerate()
    elif generator is None:
        generator = build_generator(config, prepared.model_revision, tokenizer=prepared.tokenizer)
    metadata = {
        "run_name": config.run_name or _default_run_name(config),
        "model": prepared.settings["model"],
        "model_revision": prepared.model_revision,
        "settings": {
            "decoding": config.decoding_label(),
            "benchmarks": list(config.benchmarks),
            "n": {task.name: task.n for task in prepared.tasks},
            "pass_k": list(config.pass_k) if config.pass_k is not None else "1 and n",
            "seed": config.seed,
            "backend": prepared.backend if owns_generator else type(generator).__name__,
            "tensor_parallel_size": config.tensor_parallel_size,
            "data_parallel_size": config.data_parallel_size,
            "dtype": config.dtype,
            "max_problems": config.max_problems,
            "batch_size": config.batch_size,
        },
    }
    try:
        return run_evaluation(
            generator,
            prepared.tasks,
            config.sampling_params(),
            pass_k=config.pass_k,
            batch_size=config.batch_size,
            output_dir=prepared.output_dir,
            settings=prepared.settings,
            metadata=metadata,
            format_prompt_fn=prepared.format_prompt_fn,
            progress=config.progress,
        )
    finally:
        if owns_generator and hasattr(generator, "close"):
            generator.close()


def _default_run_name(config: EvalConfig) -> str:
    model = config.model.rstrip("/\\")
    base = os.path.basename(model) if os.path.isdir(model) else model
    return f"{base} ({config.decoding_tag()})"
