"""The paper's evaluation protocol as constants: benchmarks and their order, decoding presets, the token limit,
the files of an output directory and the settings that identify a sample (arXiv 2602.15620, "Evaluation protocol").
"""

from __future__ import annotations

from collections.abc import Iterable

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


# `stored_results(output_dir)` also collects runs stored one level below this folder (`<output_dir>/eval/*/`),
# the default output directory of `stapo-eval` for a local model and of the in-training evaluation's last results.
EVAL_SUBDIR = "eval"


# The settings that change what a sample is: samples made with different values are never mixed on resume.
FINGERPRINT_KEYS = ("model", "model_revision", "temperature", "top_p", "max_new_tokens", "chat_template_kwargs")


def display_name(benchmark: str) -> str:
    return DISPLAY_NAMES.get(benchmark, benchmark)


def in_benchmark_order(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [b for b in BENCHMARK_ORDER if b in names]
    return known + [b for b in names if b not in BENCHMARK_ORDER]

