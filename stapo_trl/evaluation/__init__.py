"""avg@N evaluation on the paper's six math benchmarks (AIME24, AIME25, AMC23, MATH500, Minerva, OlympiadBench).

The protocol of the paper (arXiv 2602.15620, "Evaluation protocol") is the default: avg@32 on AIME24, AIME25 and
AMC23, avg@4 on the others, at most 20480 new tokens, the training prompt (`stapo_trl.data.build_prompt`) and two
decoding presets, `training` (temperature 1.0, top-p 1.0) and `justrl` (0.7 / 0.9). Every completion is graded by
`stapo_trl.rewards.grade`, the function behind the training reward, so that evaluation and training agree.

The modules, from the bottom up (every public name is re-exported here: `from stapo_trl.evaluation import X`):

- `protocol`: the protocol's constants (benchmark order, decoding presets, file names, resume fingerprint keys).
- `scoring`: grading of completions and the metrics `pass_at_k`, `avg_at_n`, `benchmark_scores`.
- `prompts`: `format_prompt`, the text fed to the model, rendered as in training.
- `generators`: `Completion`, `SamplingParams` and the `Generator` protocol: `generate(prompts, n, params)` returns
  `n` completions per prompt. Backends: `TransformersGenerator` (`model.generate`, works on CPU) and
  `VLLMGenerator` (vLLM, imported lazily, tensor parallel).
- `data_parallel`: `DataParallelGenerator`, copies of a generator in worker processes, one per GPU group (vLLM data
  parallelism).
- `store`: `SampleStore`, the resumable `eval_samples.jsonl`; `ResumeError` when stored samples were made with
  other settings.
- `run`: `run_evaluation(generator, tasks, params, ...)`: generates, grades, scores and, with an `output_dir`,
  appends every sample to `eval_samples.jsonl` as soon as its batch finishes. A re-run with the same `output_dir`
  skips the samples already there and refuses (`ResumeError`) to mix samples produced with other settings.
- `report`: `format_results_markdown`, `compare_markdown`: the tables; `stored_results`: the results kept in a
  training output directory (`stapo_trl.hub` puts them in the model card).
- `config` + `pipeline`: `EvalConfig` + `evaluate_model(config)`: the whole run of the `stapo-eval` CLI
  (`stapo_trl.evaluate`), from a model name or path to the files below.

Files written in the output directory (`EVAL_*` constants of `protocol`):

- `eval_settings.json`: the settings the samples were produced with (checked on resume);
- `eval_samples.jsonl`: one line per sample (benchmark, problem, sample, prompt, completion, extracted answer,
  gold, correct, num_tokens, truncated);
- `eval_results.json`: per-benchmark and average scores, the settings and the model revision;
- `eval_results.md`: the same as a Markdown table.

Every module imports only the standard library at import time; torch, transformers and vLLM are imported by the
functions that need them.
"""

from .config import (
    EvalConfig,
    resolve_model_revision,
    settings_fingerprint,
)
from .data_parallel import (
    DataParallelGenerator,
)
from .generators import (
    Completion,
    Generator,
    SamplingParams,
    TransformersGenerator,
    VLLMGenerator,
    vllm_available,
)
from .pipeline import (
    PreparedEvaluation,
    build_generator,
    check_resume_compatible,
    evaluate_model,
    load_tasks,
    prepare_evaluation,
)
from .prompts import (
    format_prompt,
)
from .protocol import (
    BACKENDS,
    BENCHMARK_ORDER,
    DATASET_OVERRIDE_FIELDS,
    DECODING_PRESETS,
    DEFAULT_DECODING,
    DISPLAY_NAMES,
    EVAL_MARKDOWN_FILE,
    EVAL_RESULTS_FILE,
    EVAL_SAMPLES_FILE,
    EVAL_SETTINGS_FILE,
    EVAL_SUBDIR,
    FINGERPRINT_KEYS,
    PAPER_MAX_NEW_TOKENS,
    display_name,
    in_benchmark_order,
)
from .report import (
    compare_markdown,
    format_results_markdown,
    load_results,
    stored_results,
)
from .run import (
    BenchmarkTask,
    build_results,
    run_evaluation,
    write_results,
)
from .scoring import (
    avg_at_n,
    benchmark_scores,
    default_pass_k,
    grade_sample,
    grade_samples,
    pass_at_k,
)
from .store import (
    ResumeError,
    SampleStore,
)

__all__ = [
    "avg_at_n",
    "BACKENDS",
    "BENCHMARK_ORDER",
    "benchmark_scores",
    "BenchmarkTask",
    "build_generator",
    "build_results",
    "check_resume_compatible",
    "compare_markdown",
    "Completion",
    "DataParallelGenerator",
    "DATASET_OVERRIDE_FIELDS",
    "DECODING_PRESETS",
    "DEFAULT_DECODING",
    "default_pass_k",
    "display_name",
    "DISPLAY_NAMES",
    "EVAL_MARKDOWN_FILE",
    "EVAL_RESULTS_FILE",
    "EVAL_SAMPLES_FILE",
    "EVAL_SETTINGS_FILE",
    "EVAL_SUBDIR",
    "EvalConfig",
    "evaluate_model",
    "FINGERPRINT_KEYS",
    "format_prompt",
    "format_results_markdown",
    "Generator",
    "grade_sample",
    "grade_samples",
    "in_benchmark_order",
    "load_results",
    "load_tasks",
    "PAPER_MAX_NEW_TOKENS",
    "pass_at_k",
    "prepare_evaluation",
    "PreparedEvaluation",
    "resolve_model_revision",
    "ResumeError",
    "run_evaluation",
    "SampleStore",
    "SamplingParams",
    "settings_fingerprint",
    "stored_results",
    "TransformersGenerator",
    "vllm_available",
    "VLLMGenerator",
    "write_results",
]
