"""avg@N evaluation on the paper's six math benchmarks (AIME24, AIME25, AMC23, MATH500, Minerva, OlympiadBench).

The protocol of the paper (arXiv 2602.15620, "Evaluation protocol") is the default: avg@32 on AIME24, AIME25 and
AMC23, avg@4 on the others, at most 20480 new tokens, the training prompt (`stapo_trl.data.build_prompt`) and two
decoding presets, `training` (temperature 1.0, top-p 1.0) and `justrl` (0.7 / 0.9). Every completion is graded by
`stapo_trl.rewards.grade`, the function behind the training reward, so that evaluation and training agree.

Pieces, from the bottom up:

- `Completion`, `SamplingParams` and the `Generator` protocol: `generate(prompts, n, params)` returns `n`
  completions per prompt. Backends: `TransformersGenerator` (`model.generate`, works on CPU), `VLLMGenerator`
  (vLLM, imported lazily, tensor parallel) and `DataParallelGenerator` (copies of a generator in worker processes,
  one per GPU group: vLLM data parallelism).
- `run_evaluation(generator, tasks, params, ...)`: generates, grades, scores and, with an `output_dir`, appends
  every sample to `eval_samples.jsonl` as soon as its batch finishes. A re-run with the same `output_dir` skips the
  samples already there and refuses (`ResumeError`) to mix samples produced with other settings.
- `EvalConfig` + `evaluate_model(config)`: the whole run of the `stapo-eval` CLI (`stapo_trl.evaluate`), from a
  model name or path to the files below.
- `pass_at_k`, `avg_at_n`: the metrics; `results_markdown`, `compare_markdown`: the tables.

Files written in the output directory (`EVAL_*` constants below):

- `eval_settings.json`: the settings the samples were produced with (checked on resume);
- `eval_samples.jsonl`: one line per sample (benchmark, problem, sample, prompt, completion, extracted answer,
  gold, correct, num_tokens, truncated);
- `eval_results.json`: per-benchmark and average scores, the settings and the model revision;
- `eval_results.md`: the same as a Markdown table (what `results_markdown` returns for the model card).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Protocol constants
# ----------------------------------------------------------------------------------------------------------------

BENCHMARK_ORDER = ("aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench")
DISPLAY_NAMES = {
    "aime24": "AIME24",
    "aime25": "AIME25",
    "amc23": "AMC23",
    "math500": "MATH500",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
}
# (temperature, top_p) of the paper's two decoding settings.
DECODING_PRESETS: dict[str, tuple[float, float]] = {"training": (1.0, 1.0), "justrl": (0.7, 0.9)}
DEFAULT_DECODING = "training"
PAPER_MAX_NEW_TOKENS = 20480
BACKENDS = ("auto", "vllm", "transformers")
DATASET_OVERRIDE_FIELDS = ("path", "split", "config", "question_column", "answer_column")

EVAL_SETTINGS_FILE = "eval_settings.json"
EVAL_SAMPLES_FILE = "eval_samples.jsonl"
EVAL_RESULTS_FILE = "eval_results.json"
EVAL_MARKDOWN_FILE = "eval_results.md"
# `results_markdown(output_dir)` also collects runs stored one level below this folder (`<output_dir>/eval/*/`),
# the default output directory of `stapo-eval` for a local model.
EVAL_SUBDIR = "eval"

# The settings that change what a sample is: samples made with different values are never mixed on resume.
FINGERPRINT_KEYS = ("model", "model_revision", "temperature", "top_p", "max_new_tokens", "chat_template_kwargs")


def display_name(benchmark: str) -> str:
    return DISPLAY_NAMES.get(benchmark, benchmark)


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. (2021): `1 - C(n - c, k) / C(n, k)`.

    The probability that at least one of `k` samples drawn without replacement from `n` samples, `c` of them
    correct, is correct. Exact (integer binomials), in [0, 1].
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_n(correct: Sequence[Sequence[bool]]) -> float:
    """avg@n in percent: the mean over problems of the fraction of correct samples (`correct[problem][sample]`)."""
    if not correct:
        raise ValueError("avg@n of zero problems is undefined")
    return 100.0 * sum(sum(row) / len(row) for row in correct) / len(correct)


def benchmark_scores(
    correct: Sequence[Sequence[bool]], num_tokens: Sequence[Sequence[int]], ks: Iterable[int], truncated=None
) -> dict[str, Any]:
    """The scores of one benchmark from the per-problem, per-sample grades (all rows have the same length n).

    Keys: `n`, `num_problems`, `num_samples`, `accuracy` (= `avg@<n>`), `avg@<n>`, `pass@<k>` for each k <= n
    (percent), `mean_num_tokens` and, when `truncated` is given, `truncated_rate` (percent).
    """
    n = len(correct[0])
    if any(len(row) != n for row in correct):
        raise ValueError("every problem must have the same number of samples")
    accuracy = avg_at_n(correct)
    scores: dict[str, Any] = {
        "n": n,
        "num_problems": len(correct),
        "num_samples": n * len(correct),
        "accuracy": accuracy,
        f"avg@{n}": accuracy,
    }
    for k in sorted(set(ks)):
        if k <= n:
            scores[f"pass@{k}"] = 100.0 * sum(pass_at_k(n, sum(row), k) for row in correct) / len(correct)
    flat_tokens = [t for row in num_tokens for t in row]
    scores["mean_num_tokens"] = sum(flat_tokens) / len(flat_tokens)
    if truncated is not None:
        flat = [bool(t) for row in truncated for t in row]
        scores["truncated_rate"] = 100.0 * sum(flat) / len(flat)
    return scores


def default_pass_k(n: int) -> tuple[int, ...]:
    """pass@k reported by default: k = 1 and k = n."""
    return tuple(sorted({1, n}))


# ----------------------------------------------------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its text (special tokens removed), its length in tokens (EOS included) and whether
    it was cut at the token limit."""

    text: str
    num_tokens: int
    truncated: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one `generate` call. `temperature == 0` means greedy decoding.

    `seed`: the seed of the first prompt of the call; backends that seed per prompt use `seed + i` for prompt `i`.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    seed: int | None = None


@runtime_checkable
class Generator(Protocol):
    """A text generation backend: `n` completions for each prompt (a string, chat template already applied)."""

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]: ...


def format_prompt(prompt, tokenizer=None, chat_template_kwargs: Mapping | None = None) -> str:
    """The text fed to the model for a benchmark prompt, as in training.

    A conversational prompt (list of messages) goes through the tokenizer's chat template with the generation
    prompt added, as TRL's `GRPOTrainer` does. A tokenizer without a chat template (e.g. the character tokenizer of
    `stapo_trl.tiny`) or no tokenizer gives the plain text: the message contents joined by blank lines (the user
    content for the one-message prompts of `build_prompt`). A string is returned unchanged.
    """
    if isinstance(prompt, str):
        return prompt
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            list(prompt), tokenize=False, add_generation_prompt=True, **dict(chat_template_kwargs or {})
        )
    return "\n\n".join(_message_text(message) for message in prompt)


def _message_text(message: Mapping) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))


def _uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


class TransformersGenerator:
    """`model.generate` backend: batched, sampling with exactly the given temperature/top-p (top-k, repetition
    penalty and the other filters of the model's generation config are switched off), works on CPU.

    Prompts are tokenized as TRL does in training: without special tokens when a chat template rendered them
    (the template holds them), with them otherwise. `max_batch_sequences` bounds the sequences of one `generate`
    call (prompts x n are split into chunks). The model is put in eval mode during generation and its previous
    mode restored afterwards; seeding forks the RNG, so the caller's random state is left untouched.
    """

    def __init__(self, model, tokenizer, *, max_batch_sequences: int = 64, chat_template_kwargs=None):
        if max_batch_sequences <= 0:
            raise ValueError(f"max_batch_sequences must be positive, got {max_batch_sequences}")
        if tokenizer.pad_token is None:  # as TRL does: padding with EOS is harmless with an attention mask
            tokenizer.pad_token = tokenizer.eos_token
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_sequences = max_batch_sequences
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        tokenizer=None,
        **kwargs,
    ) -> TransformersGenerator:
        """Load a model (and its tokenizer unless given). `dtype="auto"`: the checkpoint's dtype on GPU, float32 on
        CPU. `device=None`: all visible GPUs (`device_map="auto"`) when there is one, else the CPU."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(
                model_name_or_path, revision=revision, trust_remote_code=trust_remote_code
            )
        if device is None:
            device = "auto" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            torch_dtype = "auto" if device != "cpu" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            revision=revision,
            dtype=torch_dtype,
            device_map=device,
            trust_remote_code=trust_remote_code,
        )
        return cls(model, tokenizer, **kwargs)

    def format_prompt(self, prompt) -> str:
        return format_prompt(prompt, self.tokenizer, self.chat_template_kwargs)

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if value is None:
                continue
            ids.update(value if isinstance(value, (list, tuple)) else [value])
        return ids

    def _generation_config(self, params: SamplingParams):
        from transformers import GenerationConfig

        stop_ids = sorted(self._stop_ids())
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = stop_ids[0] if stop_ids else 0
        greedy = params.temperature == 0
        settings = dict(
            do_sample=not greedy,
            max_new_tokens=params.max_new_tokens,
            num_beams=1,
            # Explicit neutral values: unset fields would be filled from the model's generation config (e.g. top_k=20
            # in Qwen3's) and from transformers' global defaults (top_k=50).
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=stop_ids or None,
        )
        if not greedy:
            settings.update(temperature=params.temperature, top_p=params.top_p)
        return GenerationConfig(**settings)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        import torch

        if not prompts:
            return []
        expanded = [prompt for prompt in prompts for _ in range(n)]
        generation_config = self._generation_config(params)
        stop_ids = self._stop_ids()
        add_special_tokens = not _uses_chat_template(self.tokenizer)
        device = _model_input_device(self.model)
        was_training = self.model.training
        completions: list[Completion] = []
        rng_devices = [device] if device.type == "cuda" else []
        try:
            self.model.eval()
            with torch.random.fork_rng(devices=rng_devices), torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                for start in range(0, len(expanded), self.max_batch_sequences):
                    chunk = expanded[start : start + self.max_batch_sequences]
                    encoded = self.tokenizer(
                        chunk,
                        return_tensors="pt",
                        padding=True,
                        padding_side="left",
                        add_special_tokens=add_special_tokens,
                    ).to(device)
                    output = self.model.generate(
                        input_ids=encoded["input_ids"],
                        attention_mask=encoded["attention_mask"],
                        generation_config=generation_config,
                    )
                    new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
                    completions.extend(self._to_completion(row, stop_ids, params.max_new_tokens) for row in new_tokens)
        finally:
            self.model.train(was_training)
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _to_completion(self, token_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> Completion:
        end = next((i for i, token in enumerate(token_ids) if token in stop_ids), None)
        if end is None:  # no EOS: the sequence ran to the token limit
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            return Completion(text=text, num_tokens=len(token_ids), truncated=len(token_ids) >= max_new_tokens)
        text = self.tokenizer.decode(token_ids[:end], skip_special_tokens=True)
        return Completion(text=text, num_tokens=end + 1, truncated=False)


def _model_input_device(model):
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


class VLLMGenerator:
    """vLLM backend (imported lazily; `pip install stapo-trl[vllm]`). Tensor parallel over `tensor_parallel_size`
    GPUs; for data parallelism wrap a factory of it in `DataParallelGenerator` (what `evaluate_model` does).

    Prompts are tokenized here, as in training (see `TransformersGenerator`), and passed as token ids. Each prompt
    gets its own seed (`params.seed + i`), so results do not depend on batching or on the data-parallel split.
    """

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        chat_template_kwargs=None,
        **llm_kwargs,
    ):
        from vllm import LLM

        self.llm = LLM(
            model=model,
            revision=revision,
            tokenizer_revision=revision,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            trust_remote_code=trust_remote_code,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def format_prompt(self, prompt) -> str:
        return format_prompt(prompt, self.tokenizer, self.chat_template_kwargs)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        if not prompts:
            return []
        add_special_tokens = not _uses_chat_template(self.tokenizer)
        inputs = [
            {"prompt_token_ids": self.tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]}
            for prompt in prompts
        ]
        sampling = [
            VLLMSamplingParams(
                n=n,
                temperature=params.temperature,
                top_p=params.top_p if params.temperature > 0 else 1.0,
                max_tokens=params.max_new_tokens,
                seed=None if params.seed is None else params.seed + i,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        return [
            [
                Completion(
                    text=sample.text,
                    num_tokens=len(sample.token_ids),
                    truncated=getattr(sample, "finish_reason", None) == "length",
                )
                for sample in output.outputs
            ]
            for output in outputs
        ]


def _dp_worker(factory, connection, environment: Mapping[str, str]) -> None:
    """Body of a `DataParallelGenerator` worker process: build the generator, then serve `generate` calls."""
    import traceback

    os.environ.update(environment)
    try:
        generator = factory()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", None))
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent is gone
            break
        if request is None:
            break
        try:
            connection.send(("ok", generator.generate(*request)))
        except BaseException:  # noqa: BLE001
            connection.send(("error", traceback.format_exc()))
    close = getattr(generator, "close", None)
    if close is not None:
        close()


class DataParallelGenerator:
    """`num_workers` copies of a generator, each in its own (spawned) process, each prompt batch split between
    them in contiguous shards; results come back in prompt order.

    `factory` is a picklable callable that builds the generator in the worker (e.g.
    `functools.partial(VLLMGenerator, model, tensor_parallel_size=2)`). With `devices_per_worker > 0`, worker `r`
    sees only GPUs `[r * devices_per_worker, (r + 1) * devices_per_worker)` of `devices` (default: the visible ones)
    through `CUDA_VISIBLE_DEVICES`. Shard `s` of a call gets the seed `params.seed + <index of its first prompt>`,
    matching the per-prompt seeds of `VLLMGenerator`. `start_method`: "spawn" (default; required with CUDA, as a
    forked process cannot initialise it) or "fork" (CPU-only uses, where it saves the workers' imports).
    """

    def __init__(
        self,
        factory: Callable[[], Generator],
        num_workers: int,
        *,
        devices_per_worker: int = 0,
        devices: Sequence[str] | None = None,
        start_method: str = "spawn",
    ):
        import multiprocessing

        if num_workers <= 0:
            raise ValueError(f"num_workers must be positive, got {num_workers}")
        if devices_per_worker > 0:
            devices = list(devices) if devices is not None else _visible_cuda_devices()
            needed = num_workers * devices_per_worker
            if len(devices) < needed:
                raise ValueError(
                    f"data parallel size {num_workers} x tensor parallel size {devices_per_worker} needs {needed} GPUs,"
                    f" {len(devices)} visible"
                )
        context = multiprocessing.get_context(start_method)
        self._connections = []
        self._processes = []
        for rank in range(num_workers):
            environment = {}
            if devices_per_worker > 0:
                shard = devices[rank * devices_per_worker : (rank + 1) * devices_per_worker]
                environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in shard)
            parent_end, child_end = context.Pipe()
            # Not a daemon: vLLM starts processes of its own, which daemonic processes may not do. A worker exits when
            # told to (`close`) or when the parent's end of its pipe closes.
            process = context.Process(target=_dp_worker, args=(factory, child_end, environment), daemon=False)
            process.start()
            child_end.close()
            self._connections.append(parent_end)
            self._processes.append(process)
        try:
            for rank, connection in enumerate(self._connections):
                self._receive(rank, connection)
        except BaseException:
            self.close()
            raise

    @property
    def num_workers(self) -> int:
        return len(self._processes)

    def _receive(self, rank: int, connection):
        try:
            status, payload = connection.recv()
        except EOFError as error:
            raise RuntimeError(f"data-parallel worker {rank} died") from error
        if status == "error":
            raise RuntimeError(f"data-parallel worker {rank} failed:\n{payload}")
        return payload

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        size = math.ceil(len(prompts) / self.num_workers)
        busy = []
        for rank, connection in enumerate(self._connections):
            start = rank * size
            shard = prompts[start : start + size]
            if not shard:
                break
            seed = None if params.seed is None else params.seed + start
            connection.send((shard, n, dataclasses.replace(params, seed=seed)))
            busy.append((rank, connection))
        results: list[list[Completion]] = []
        errors = []
        for rank, connection in busy:  # receive from every busy worker, even after an error, to stay in sync
            try:
                results.extend(self._receive(rank, connection))
            except RuntimeError as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError("\n".join(errors))
        return results

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send(None)
            except (OSError, BrokenPipeError):
                pass
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        for connection in self._connections:
            connection.close()
        self._connections, self._processes = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _visible_cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# ----------------------------------------------------------------------------------------------------------------
# The evaluation loop
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkTask:
    """The problems of one benchmark: `prompts` (conversational or text) and gold `answers`, `n` samples each.
    `metadata` (e.g. the dataset spec) is stored with the results."""

    name: str
    prompts: Sequence[Any]
    answers: Sequence[str]
    n: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.prompts) != len(self.answers):
            raise ValueError(f"{self.name}: {len(self.prompts)} prompts but {len(self.answers)} answers")
        if not self.prompts:
            raise ValueError(f"{self.name}: no problems")
        if self.n <= 0:
            raise ValueError(f"{self.name}: n must be positive, got {self.n}")


class ResumeError(RuntimeError):
    """The output directory holds samples produced with other settings (or for other prompts)."""


def grade_sample(completion: str, gold: str) -> tuple[bool, str | None]:
    """(correct, extracted answer) of one completion: `stapo_trl.rewards.grade`, the grading of the training
    reward, and the boxed answer it read (for inspection only)."""
    from .rewards import extract_boxed_answer, grade

    return bool(grade(completion, gold)), extract_boxed_answer(completion)


def grade_samples(completions: Sequence[str], golds: Sequence[str]) -> list[tuple[bool, str | None]]:
    """`grade_sample` for a batch: `stapo_trl.rewards.grade_batch` runs `grade` over its worker processes."""
    from .rewards import extract_boxed_answer, grade_batch

    correct = grade_batch(list(completions), list(golds))
    return [(bool(ok), extract_boxed_answer(text)) for ok, text in zip(correct, completions, strict=True)]


def _batch_seed(seed: int | None, benchmark: str, problem: int) -> int | None:
    """A seed per (benchmark, first problem of the batch): a resumed run draws the same as an uninterrupted one."""
    if seed is None:
        return None
    return zlib.crc32(f"{seed}:{benchmark}:{problem}".encode()) & 0x7FFFFFFF


class SampleStore:
    """`eval_samples.jsonl` + `eval_settings.json` of an output directory: load what is done, append new samples
    (flushed and fsynced per batch), refuse other settings."""

    def __init__(self, output_dir: str | os.PathLike, settings: Mapping[str, Any]):
        self.output_dir = Path(output_dir)
        self.samples_path = self.output_dir / EVAL_SAMPLES_FILE
        self.settings_path = self.output_dir / EVAL_SETTINGS_FILE
        self.settings = _jsonable(dict(settings))
        self.records: dict[tuple[str, int, int], dict] = {}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self._load()

    def _has_samples(self) -> bool:
        return self.samples_path.exists() and self.samples_path.stat().st_size > 0

    def _check_settings(self) -> None:
        if self.settings_path.exists() and self._has_samples():
            stored = json.loads(self.settings_path.read_text())
            keys = sorted(set(stored) | set(self.settings))
            diff = [k for k in keys if stored.get(k) != self.settings.get(k)]
            if diff:
                lines = "\n".join(f"  {k}: stored {stored.get(k)!r}, now {self.settings.get(k)!r}" for k in diff)
                raise ResumeError(
                    f"{self.output_dir} holds samples produced with other settings; refusing to mix them:\n{lines}\n"
                    "Use another --output_dir (or delete this one) to evaluate with the new settings."
                )
        elif self._has_samples():
            raise ResumeError(
                f"{self.samples_path} exists but {self.settings_path.name} does not: the settings of those samples "
                "are unknown. Use another --output_dir."
            )
        else:  # a fresh directory (or one whose run stopped before its first sample): these settings now
            _write_json_atomic(self.settings_path, self.settings)

    def _load(self) -> None:
        if not self.samples_path.exists():
            return
        raw = self.samples_path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # A crash during a write left a partial last line: drop it (its batch is generated again).
            keep = raw.rfind(b"\n") + 1
            logger.warning("dropping a partial last line of %s", self.samples_path)
            with open(self.samples_path, "r+b") as handle:
                handle.truncate(keep)
            raw = raw[:keep]
        for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ResumeError(f"{self.samples_path}:{number} is not valid JSON: {error}") from error
            key = (record["benchmark"], int(record["problem"]), int(record["sample"]))
            self.records.setdefault(key, record)

    def check_problem(self, benchmark: str, problem: int, prompt: str, gold: str) -> None:
        record = self.records.get((benchmark, problem, 0)) or next(
            (r for (b, p, _), r in self.records.items() if b == benchmark and p == problem), None
        )
        if record is None:
            return
        if record["prompt"] != prompt or record["gold"] != gold:
            what = "prompt" if record["prompt"] != prompt else "gold answer"
            raise ResumeError(
                f"{self.samples_path}: the stored {what} of {benchmark} problem {problem} differs from the current one "
                "(another dataset, split, prompt template or chat template?); refusing to mix them. "
                "Use another --output_dir."
            )

    def append(self, records: Sequence[dict]) -> None:
        with open(self.samples_path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.records[(record["benchmark"], record["problem"], record["sample"])] = record


def run_evaluation(
    generator: Generator,
    tasks: Sequence[BenchmarkTask],
    params: SamplingParams,
    *,
    pass_k: Sequence[int] | None = None,
    batch_size: int = 64,
    output_dir: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    format_prompt_fn: Callable[[Any], str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, grade and score `tasks`; return the results (see `EVAL_RESULTS_FILE` for the layout).

    - `batch_size` prompts go to `generator.generate` per call; with `output_dir`, the samples of each call are
      appended to `eval_samples.jsonl` (flushed) before the next call, and samples already there are skipped (a
      problem with some samples done gets only the missing ones).
    - `settings`: what identifies how samples are produced (model, revision, temperature, top-p, max new tokens,
      chat template kwargs, see `FINGERPRINT_KEYS`); stored in `eval_settings.json`, and a re-run with other
      settings raises `ResumeError`, as does a stored prompt or gold answer that differs from the current one.
      Defaults to the fields of `params` other than the seed.
    - `pass_k`: the k of pass@k (each k <= n of the benchmark); default 1 and n.
    - `format_prompt_fn`: renders a prompt to text; default `generator.format_prompt` when it has one, else
      `format_prompt` without tokenizer.
    - `metadata`: extra entries of the results (model, run name, backend, ...).
    With `output_dir`, the results are also written to `eval_results.json` and `eval_results.md`.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if settings is None:
        settings = {"temperature": params.temperature, "top_p": params.top_p, "max_new_tokens": params.max_new_tokens}
    if format_prompt_fn is None:
        format_prompt_fn = getattr(generator, "format_prompt", None) or format_prompt
    store = SampleStore(output_dir, settings) if output_dir is not None else None
    records: dict[tuple[str, int, int], dict] = dict(store.records) if store else {}

    from tqdm.auto import tqdm

    benchmarks: dict[str, Any] = {}
    for task in tasks:
        texts = [format_prompt_fn(prompt) for prompt in task.prompts]
        golds = [str(answer) for answer in task.answers]
        if store is not None:
            for problem, (text, gold) in enumerate(zip(texts, golds, strict=True)):
                store.check_problem(task.name, problem, text, gold)
        missing = {
            problem: [s for s in range(task.n) if (task.name, problem, s) not in records]
            for problem in range(len(texts))
        }
        done = sum(task.n - len(samples) for samples in missing.values())
        # Group the pending problems by how many samples they miss (usually all or none): one n per call.
        by_count: dict[int, list[int]] = {}
        for problem, samples in missing.items():
            if samples:
                by_count.setdefault(len(samples), []).append(problem)
        with tqdm(
            total=task.n * len(texts),
            initial=done,
            desc=display_name(task.name),
            unit="sample",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            for count, problems in sorted(by_count.items(), reverse=True):
                for start in range(0, len(problems), batch_size):
                    batch = problems[start : start + batch_size]
                    call_params = dataclasses.replace(params, seed=_batch_seed(params.seed, task.name, batch[0]))
                    outputs = generator.generate([texts[p] for p in batch], count, call_params)
                    if len(outputs) != len(batch) or any(len(o) != count for o in outputs):
                        raise RuntimeError(
                            f"generator returned {[len(o) for o in outputs]} completions for {len(batch)} prompts "
                            f"x {count}"
                        )
                    flat = [
                        (problem, sample, completion)
                        for problem, completions in zip(batch, outputs, strict=True)
                        for sample, completion in zip(missing[problem], completions, strict=True)
                    ]
                    grades = grade_samples([c.text for _, _, c in flat], [golds[p] for p, _, _ in flat])
                    new_records = [
                        {
                            "benchmark": task.name,
                            "problem": problem,
                            "sample": sample,
                            "prompt": texts[problem],
                            "completion": completion.text,
                            "extracted_answer": extracted,
                            "gold": golds[problem],
                            "correct": correct,
                            "num_tokens": int(completion.num_tokens),
                            "truncated": bool(completion.truncated),
                        }
                        for (problem, sample, completion), (correct, extracted) in zip(flat, grades, strict=True)
                    ]
                    if store is not None:
                        store.append(new_records)
                    for record in new_records:
                        records[(record["benchmark"], record["problem"], record["sample"])] = record
                    bar.update(len(new_records))
        table = [[records[(task.name, p, s)] for s in range(task.n)] for p in range(len(texts))]
        ks = pass_k if pass_k is not None else default_pass_k(task.n)
        scores = benchmark_scores(
            [[r["correct"] for r in row] for row in table],
            [[r["num_tokens"] for r in row] for row in table],
            ks,
            truncated=[[r.get("truncated", False) for r in row] for row in table],
        )
        scores["display_name"] = display_name(task.name)
        if task.metadata:
            scores.update(_jsonable(task.metadata))
        benchmarks[task.name] = scores

    results = build_results(benchmarks, settings=settings, params=params, metadata=metadata)
    if output_dir is not None:
        write_results(results, output_dir)
    return results


def build_results(
    benchmarks: Mapping[str, Mapping[str, Any]],
    *,
    settings: Mapping[str, Any] | None = None,
    params: SamplingParams | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The results document: metadata, settings, per-benchmark scores, and their unweighted average."""
    metadata = dict(metadata or {})
    all_settings = dict(settings or {})
    if params is not None:
        all_settings.setdefault("temperature", params.temperature)
        all_settings.setdefault("top_p", params.top_p)
        all_settings.setdefault("max_new_tokens", params.max_new_tokens)
        all_settings.setdefault("seed", params.seed)
    all_settings.update(metadata.pop("settings", {}))
    from . import __version__

    results = {
        "run_name": metadata.pop("run_name", None),
        "model": metadata.pop("model", all_settings.get("model")),
        "model_revision": metadata.pop("model_revision", all_settings.get("model_revision")),
        **metadata,
        "settings": all_settings,
        "benchmarks": {name: dict(scores) for name, scores in benchmarks.items()},
        "average": {
            "accuracy": sum(s["accuracy"] for s in benchmarks.values()) / len(benchmarks) if benchmarks else None,
            "benchmarks": list(benchmarks),
        },
        "stapo_trl_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return _jsonable(results)


def write_results(results: Mapping[str, Any], output_dir: str | os.PathLike) -> None:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(output_dir / EVAL_RESULTS_FILE, results)
    (output_dir / EVAL_MARKDOWN_FILE).write_text(format_results_markdown(results))


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Path):
        return str(value)
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return value


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> str:
    """A Markdown table padded so that it also reads as a plain-text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    widths = [max(w, 3) for w in widths]

    def line(cells):
        return (
            "| "
            + " | ".join(
                str(c).rjust(w) if a == "r" else str(c).ljust(w) for c, w, a in zip(cells, widths, align, strict=True)
            )
            + " |"
        )

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _fmt(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [b for b in BENCHMARK_ORDER if b in names]
    return known + [b for b in names if b not in BENCHMARK_ORDER]


def format_results_markdown(results: Mapping[str, Any]) -> str:
    """One run as Markdown: a line with the model and decoding, then benchmarks as rows (n, avg@n, pass@k, mean
    completion length in tokens, truncated %) and the average of avg@n last."""
    benchmarks = results["benchmarks"]
    names = _order(benchmarks)
    ks = sorted({int(key[5:]) for b in benchmarks.values() for key in b if key.startswith("pass@")})
    header = ["Benchmark", "n", "avg@n", *(f"pass@{k}" for k in ks), "Mean tokens", "Truncated %"]
    rows = []
    for name in names:
        scores = benchmarks[name]
        rows.append(
            [
                scores.get("display_name", display_name(name)),
                str(scores["n"]),
                _fmt(scores["accuracy"]),
                *(_fmt(scores.get(f"pass@{k}")) for k in ks),
                _fmt(scores.get("mean_num_tokens"), 1),
                _fmt(scores.get("truncated_rate"), 1),
            ]
        )
    rows.append(["Average", "", _fmt(results["average"]["accuracy"]), *([""] * len(ks)), "", ""])
    settings = results.get("settings", {})
    revision = results.get("model_revision")
    model = f"`{results.get('model')}`" + (f" (revision `{revision}`)" if revision else "")
    decoding = settings.get("decoding")
    sampling = f"temperature {settings.get('temperature')}, top-p {settings.get('top_p')}"
    description = (
        f"Model: {model}. Decoding: {decoding + ' (' + sampling + ')' if decoding else sampling}, "
        f"at most {settings.get('max_new_tokens')} new tokens. Scores in %; avg@n is the mean accuracy over n "
        "samples per problem, pass@k the unbiased estimator of Chen et al. (2021)."
    )
    title = f"### {results['run_name']}\n\n" if results.get("run_name") else ""
    align = ["l", "r", "r", *("r" for _ in ks), "r", "r"]
    return f"{title}{description}\n\n{_markdown_table(header, rows, align)}\n"


def compare_markdown(runs: Sequence[Mapping[str, Any]], labels: Sequence[str] | None = None) -> str:
    """Runs side by side as in the paper's table: one row per run, benchmarks as columns (avg@n, %), the average
    last. A run without a benchmark shows `-` there, and `-` as its average (which would not be comparable)."""
    if labels is None:
        labels = [run.get("run_name") or run.get("model") or f"run {i + 1}" for i, run in enumerate(runs)]
    if len(labels) != len(runs):
        raise ValueError(f"{len(labels)} labels for {len(runs)} runs")
    names = _order(name for run in runs for name in run["benchmarks"])
    header = ["Run", *(display_name(name) for name in names), "Average"]
    rows = []
    for label, run in zip(labels, runs, strict=True):
        cells = [run["benchmarks"].get(name, {}).get("accuracy") for name in names]
        average = None if any(c is None for c in cells) else sum(cells) / len(cells)
        rows.append([label, *(_fmt(c) for c in cells), _fmt(average)])
    return _markdown_table(header, rows, ["l", *("r" for _ in names), "r"]) + "\n"


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results JSON, given as the file or as the output directory holding `eval_results.json`."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {path}")
    results = json.loads(path.read_text())
    if "benchmarks" not in results:
        raise ValueError(f"{path} is not an evaluation results file (no 'benchmarks')")
    return results


def results_markdown(output_dir: str | os.PathLike) -> str | None:
    """The evaluation results of a training output directory as Markdown, for the model card; `None` if there are
    none.

    Reads `<output_dir>/eval_results.json` and the runs in `<output_dir>/eval/*/eval_results.json` (the default
    output directory of `stapo-eval --model <output_dir>`). One run gives its table; several give a comparison
    table (a row per run) followed by each run's table.
    """
    output_dir = Path(output_dir)
    paths = []
    if (output_dir / EVAL_RESULTS_FILE).is_file():
        paths.append(output_dir / EVAL_RESULTS_FILE)
    if (output_dir / EVAL_SUBDIR).is_dir():
        paths.extend(sorted((output_dir / EVAL_SUBDIR).glob(f"*/{EVAL_RESULTS_FILE}")))
    runs = []
    for path in paths:
        try:
            runs.append(load_results(path))
        except (OSError, ValueError) as error:
            logger.warning("skipping unreadable evaluation results %s: %s", path, error)
    if not runs:
        return None
    if len(runs) == 1:
        return format_results_markdown(runs[0])
    labels = [run.get("run_name") or path.parent.name for run, path in zip(runs, paths, strict=True)]
    parts = [compare_markdown(runs, labels)]
    parts.extend(format_results_markdown(run) for run in runs)
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# The CLI's run: configuration, model loading, files
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """Everything `stapo-eval` needs; validated on creation (the messages name the CLI flags).

    `n`: `None` for the paper's avg@N (32 on AIME24/AIME25/AMC23, 4 elsewhere), an int for every benchmark, or a
    mapping benchmark -> n (others keep the paper's). `temperature`/`top_p`: `None` takes the `decoding` preset.
    `pass_k`: `None` for k = 1 and n; otherwise each k is reported on the benchmarks with n >= k (a k above every
    n is an error). `dataset_overrides`: benchmark -> {path, split, config, question_column, answer_column}.
    `output_dir`: `None` gives `<model>/eval/<tag>` for a local model, `eval_runs/<org--name>/<tag>` otherwise.
    """

    model: str | None = None
    revision: str | None = None
    output_dir: str | None = None
    benchmarks: Sequence[str] = BENCHMARK_ORDER
    decoding: str = DEFAULT_DECODING
    temperature: float | None = None
    top_p: float | None = None
    n: int | Mapping[str, int] | None = None
    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    pass_k: Sequence[int] | None = None
    seed: int = 0
    batch_size: int = 64
    max_problems: int | None = None
    dataset_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    backend: str = "auto"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"
    max_batch_sequences: int = 64
    trust_remote_code: bool = False
    chat_template_kwargs: Mapping[str, Any] | None = None
    run_name: str | None = None
    progress: bool = True

    def __post_init__(self):
        from .data import BENCHMARKS

        known = list(BENCHMARKS)
        benchmarks = [str(b).strip().lower() for b in self.benchmarks]
        if len(benchmarks) == 1 and benchmarks[0] == "all":
            benchmarks = _order(known)
        if not benchmarks:
            raise ValueError(f"--benchmarks: select at least one of: {', '.join(known)} (or 'all')")
        unknown = [b for b in benchmarks if b not in BENCHMARKS]
        if unknown:
            raise ValueError(
                f"--benchmarks: unknown benchmark(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(known)} "
                "(or 'all')"
            )
        self.benchmarks = tuple(dict.fromkeys(benchmarks))
        if self.decoding not in DECODING_PRESETS:
            raise ValueError(
                f"--decoding: unknown preset {self.decoding!r}; accepted: {', '.join(DECODING_PRESETS)} "
                f"({', '.join(f'{k} = temperature {t}, top-p {p}' for k, (t, p) in DECODING_PRESETS.items())})"
            )
        if self.temperature is not None and not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise ValueError(f"--top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.n, Mapping):
            self.n = {str(b).lower(): value for b, value in self.n.items()}
            bad = [b for b in self.n if b not in BENCHMARKS]
            if bad:
                raise ValueError(f"--n: unknown benchmark(s) {', '.join(map(repr, bad))}; accepted: {', '.join(known)}")
            values = list(self.n.values())
        else:
            values = [] if self.n is None else [self.n]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--n must be a positive integer (samples per problem), got {value!r}")
        _positive_int("--max_new_tokens", self.max_new_tokens)
        _positive_int("--batch_size", self.batch_size)
        _positive_int("--tensor_parallel_size", self.tensor_parallel_size)
        _positive_int("--data_parallel_size", self.data_parallel_size)
        _positive_int("--max_batch_sequences", self.max_batch_sequences)
        if self.max_problems is not None:
            _positive_int("--max_problems", self.max_problems)
        if self.max_model_len is not None:
            _positive_int("--max_model_len", self.max_model_len)
        if not (0 < self.gpu_memory_utilization <= 1):
            raise ValueError(f"--gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.pass_k is not None:
            ks = list(self.pass_k)
            if not ks:
                raise ValueError("--pass_k: give at least one k")
            for k in ks:
                _positive_int("--pass_k", k)
            largest = max(self.samples_per_problem(b) for b in self.benchmarks)
            too_big = [k for k in ks if k > largest]
            if too_big:
                raise ValueError(
                    f"--pass_k: k={too_big} exceeds the number of samples per problem of every selected benchmark "
                    f"(largest n = {largest}); pass@k needs k <= n (raise --n)"
                )
            self.pass_k = tuple(sorted(set(ks)))
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend: unknown backend {self.backend!r}; accepted: {', '.join(BACKENDS)}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"--dtype: unknown dtype {self.dtype!r}; accepted: auto, bfloat16, float16, float32")
        overrides = {}
        for benchmark, fields in dict(self.dataset_overrides).items():
            benchmark = str(benchmark).lower()
            if benchmark not in BENCHMARKS:
                raise ValueError(
                    f"dataset override for unknown benchmark {benchmark!r}; accepted: {', '.join(known)}"
                )
            bad = [f for f in fields if f not in DATASET_OVERRIDE_FIELDS]
            if bad:
                raise ValueError(f"dataset override field(s) {bad}; accepted: {', '.join(DATASET_OVERRIDE_FIELDS)}")
            overrides[benchmark] = dict(fields)
        self.dataset_overrides = overrides
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, Mapping):
            raise ValueError("--chat_template_kwargs must be a JSON object")

    def samples_per_problem(self, benchmark: str) -> int:
        from .data import PAPER_SAMPLES_PER_PROBLEM

        if isinstance(self.n, Mapping) and benchmark in self.n:
            return int(self.n[benchmark])
        if isinstance(self.n, int):
            return self.n
        return int(PAPER_SAMPLES_PER_PROBLEM.get(benchmark, 4))

    @property
    def resolved_temperature(self) -> float:
        return DECODING_PRESETS[self.decoding][0] if self.temperature is None else float(self.temperature)

    @property
    def resolved_top_p(self) -> float:
        return DECODING_PRESETS[self.decoding][1] if self.top_p is None else float(self.top_p)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.resolved_temperature,
            top_p=self.resolved_top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def decoding_label(self) -> str:
        """The preset's name when temperature and top-p are the preset's, else `custom`."""
        if (self.resolved_temperature, self.resolved_top_p) == DECODING_PRESETS[self.decoding]:
            return self.decoding
        return "custom"

    def decoding_tag(self) -> str:
        """Name of the default output sub-folder: the preset (`training`, `justrl`), `-max<N>` appended when the
        token limit is not the paper's; explicit values (`T0.6-top_p0.95`) when they differ from the preset."""
        label = self.decoding_label()
        tag = label if label != "custom" else f"T{self.resolved_temperature:g}-top_p{self.resolved_top_p:g}"
        if self.max_new_tokens != PAPER_MAX_NEW_TOKENS:
            tag += f"-max{self.max_new_tokens}"
        return tag

    def resolved_output_dir(self) -> str:
        if self.output_dir is not None:
            return self.output_dir
        if self.model is None:
            raise ValueError("--model is required")
        if os.path.isdir(self.model):
            return os.path.join(self.model, EVAL_SUBDIR, self.decoding_tag())
        return os.path.join("eval_runs", self.model.replace("/", "--"), self.decoding_tag())

    def resolved_backend(self) -> str:
        if self.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.backend


def _positive_int(flag: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def resolve_model_revision(model: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """The revision recorded with the results: `"local"` for a local directory, the commit hash for a Hub model
    (read from the local Hub cache after fetching `config.json`; offline this works when the model is cached),
    else the requested revision (or `"unknown"`) when it cannot be resolved."""
    if os.path.isdir(model):
        return "local"
    if revision is not None and _SHA_RE.match(revision):
        return revision
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(model, "config.json", revision=revision, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - the revision is informative, never a reason to fail
        logger.warning("could not resolve the commit of %s@%s: %s", model, revision or "main", error)
        return revision or "unknown"
    parts = Path(path).parts
    if "snapshots" in parts:
        candidate = parts[parts.index("snapshots") + 1]
        if _SHA_RE.match(candidate):
            return candidate
    return revision or "unknown"


def load_tasks(config: EvalConfig) -> list[BenchmarkTask]:
    """The selected benchmarks, loaded with `stapo_trl.data.load_benchmark` (prompts built with `build_prompt`)."""
    from .data import load_benchmark, resolve_benchmark_spec

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
                    "dataset": {k: v for k, v in _jsonable(spec).items() if k != "notes"},
                    "total_problems": total,
                },
            )
        )
    return tasks


def settings_fingerprint(config: EvalConfig, model_revision: str) -> dict[str, Any]:
    """The settings that must match for samples to be mixed on resume (`FINGERPRINT_KEYS`)."""
    model = os.path.abspath(config.model) if os.path.isdir(config.model) else config.model
    return {
        "model": model,
        "model_revision": model_revision,
        "temperature": config.resolved_temperature,
        "top_p": config.resolved_top_p,
        "max_new_tokens": config.max_new_tokens,
        "chat_template_kwargs": dict(config.chat_template_kwargs or {}),
    }


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
