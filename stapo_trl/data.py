"""Training and benchmark dataset registry, prompt formatting and loading.

Every dataset, whatever its source schema, is turned into the two columns TRL's ``GRPOTrainer`` and the
evaluation harness use:

* ``prompt``: a conversational prompt, ``[{"role": "user", "content": question + "\\n\\n" + suffix}]``,
  where ``suffix`` is the paper's :data:`PROMPT_SUFFIX`; the chat template is applied later by TRL;
* ``answer``: the gold answer as a string, which TRL passes to reward functions as the ``answer``
  keyword (see :func:`stapo_trl.rewards.boxed_reward`).

A :class:`DatasetSpec` says where a dataset lives (Hub id or local file/folder, config, split) and
which fields hold the question and the answer. Column names may be dotted paths into nested fields
(``"reward_model.ground_truth"``); optional named transforms (see :data:`TRANSFORMS`) clean the raw
values. Registered specs: :data:`TRAINING_DATASETS` and :data:`BENCHMARKS`.

Any spec can point at a local JSON/JSONL/Parquet/CSV file or folder instead of the Hub
(``load_benchmark("aime24", path="my_aime.jsonl")``); the repository's test fixtures under
``tests/fixtures/datasets/<name>.jsonl`` have the same schema as each registered dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_TRAINING_DATASET",
    "PAPER_SAMPLES_PER_PROBLEM",
    "PROMPT_SEPARATOR",
    "PROMPT_SUFFIX",
    "TRAINING_DATASETS",
    "TRANSFORMS",
    "DatasetCheckError",
    "DatasetSpec",
    "answer_to_str",
    "build_prompt",
    "check_training_rows",
    "dapo_chat_question",
    "load_benchmark",
    "load_raw_dataset",
    "load_training_dataset",
    "prepare_dataset",
    "read_first_rows",
    "resolve_benchmark_spec",
    "resolve_training_spec",
    "strip_dapo_instructions",
    "strip_math_delimiters",
]

#: The instruction the STAPO paper appends to every question.
PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
#: What separates the question from the suffix in the user message: one blank line.
PROMPT_SEPARATOR = "\n\n"

# --------------------------------------------------------------------------------------------------
# Value transforms (named module-level functions, so specs stay picklable and easy to serialise)
# --------------------------------------------------------------------------------------------------

# The instruction DAPO-Math-17k wraps around every question (its answers are requested as
# "Answer: ..."), which would contradict our \boxed{} suffix. Both DAPO variants carry it.
_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the "
    "form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
_DAPO_SUFFIX = 'Remember to put your answer on its own line after "Answer:".'


def answer_to_str(value: Any) -> str:
    """Convert a raw answer value to a string gold answer.

    Strings are stripped; integral floats lose their ``.0`` (``27.0`` -> ``"27"``); lists/tuples (e.g.
    several accepted final answers) are joined with ``", "``; ``None`` becomes ``""``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(answer_to_str(v) for v in value)
    return str(value).strip()


def strip_dapo_instructions(text: Any) -> str:
    """Remove DAPO-Math-17k's "Solve the following math problem..."/"Remember to put..." wrapper.

    Text without the wrapper is returned stripped but otherwise unchanged.
    """
    text = "" if text is None else str(text).strip()
    if text.startswith(_DAPO_PREFIX):
        text = text[len(_DAPO_PREFIX) :].strip()
    if text.endswith(_DAPO_SUFFIX):
        text = text[: -len(_DAPO_SUFFIX)].strip()
    return text


def dapo_chat_question(messages: Any) -> str:
    """Question text of the original DAPO-Math-17k ``prompt`` column (a list of chat messages).

    Takes the content of the (last) user message and removes the DAPO instruction wrapper.
    """
    if isinstance(messages, str):
        return strip_dapo_instructions(messages)
    if isinstance(messages, dict):
        messages = [messages]
    contents = [m.get("content") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    if not contents:
        contents = [m.get("content") for m in messages or [] if isinstance(m, dict)]
    return strip_dapo_instructions(contents[-1] if contents else "")


def strip_math_delimiters(value: Any) -> str:
    """Answer string without surrounding ``$...$``; lists are joined with ``", "`` (item by item)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(strip_math_delimiters(v) for v in value)
    text = answer_to_str(value)
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    return text


#: Transforms a :class:`DatasetSpec` can name in ``question_transform`` / ``answer_transform``.
TRANSFORMS: dict[str, Callable[[Any], Any]] = {
    "strip_dapo_instructions": strip_dapo_instructions,
    "dapo_chat_question": dapo_chat_question,
    "strip_math_delimiters": strip_math_delimiters,
}

# --------------------------------------------------------------------------------------------------
# Specs and registries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives and how to read a question and an answer from each row.

    Attributes:
        name: Short name (a registry key, or the path for custom datasets); used in messages.
        path: Hub dataset id (``owner/name``), or a local file (``.json``, ``.jsonl``, ``.parquet``,
            ``.csv``, ``.arrow``), a local dataset folder, or a ``save_to_disk`` folder.
        split: Split to load. For a local file the whole file becomes this split.
        question_column: Column holding the question; a dotted path reaches into nested fields
            (``"prompt.0.content"``).
        answer_column: Column holding the gold answer (dotted paths allowed,
            e.g. ``"reward_model.ground_truth"``).
        config: Hub configuration (subset) name, if the dataset has several.
        dedup_by_question: Keep only the first row of each distinct question (after transforms).
        question_transform: Name in :data:`TRANSFORMS` (or a module-level function) applied to the raw
            question value; the result is converted with ``str``.
        answer_transform: Same for the answer; the result is converted with :func:`answer_to_str`.
        notes: Provenance and schema notes (what was checked, what is assumed).
    """

    name: str
    path: str
    split: str
    question_column: str
    answer_column: str
    config: str | None = None
    dedup_by_question: bool = False
    question_transform: str | Callable[[Any], Any] | None = None
    answer_transform: str | Callable[[Any], Any] | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        for field_name in ("question_transform", "answer_transform"):
            value = getattr(self, field_name)
            if isinstance(value, str) and value not in TRANSFORMS:
                raise ValueError(
                    f"Unknown {field_name} {value!r} for dataset {self.name!r}; "
                    f"known transforms: {sorted(TRANSFORMS)}"
                )
            if value is not None and not isinstance(value, str) and not callable(value):
                raise ValueError(f"{field_name} must be a transform name or a function, got {value!r}")

    def with_overrides(self, **overrides: Any) -> DatasetSpec:
        """Return a copy with the given fields replaced; ``None`` values are ignored.

        Raises:
            ValueError: If a keyword is not a field of :class:`DatasetSpec`.
        """
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"Unknown DatasetSpec field(s) {unknown}; valid fields: {sorted(fields)}")
        changes = {key: value for key, value in overrides.items() if value is not None}
        return dataclasses.replace(self, **changes) if changes else self


#: Registered training datasets. Schemas checked against the dataset cards / creation script on the Hub.
TRAINING_DATASETS: dict[str, DatasetSpec] = {
    "dapo-math-17k": DatasetSpec(
        name="dapo-math-17k",
        path="open-r1/DAPO-Math-17k-Processed",
        config="all",
        split="train",
        question_column="prompt",
        answer_column="solution",
        question_transform="strip_dapo_instructions",
        notes=(
            "DAPO-Math-17k de-duplicated by open-r1 (17,398 unique prompts). Configs: 'all' (used here, "
            "the full set the paper trains on), 'en' (14,116 English-only rows), 'cn'. Columns: prompt "
            "(str: the user message of the original, including DAPO's 'Solve the following math problem"
            "...'/'Remember to put your answer...' wrapper, removed here), solution (str: the ground-truth "
            "answer), data_source, source_prompt, ability, reward_model, extra_info. Checked against the "
            "repository's create_dataset.py and published usages."
        ),
    ),
    "dapo-math-17k-original": DatasetSpec(
        name="dapo-math-17k-original",
        path="BytedTsinghua-SIA/DAPO-Math-17k",
        split="train",
        question_column="prompt",
        answer_column="reward_model.ground_truth",
        question_transform="dapo_chat_question",
        dedup_by_question=True,
        notes=(
            "The original release: each of the ~17.4k prompts is repeated (~1.79M rows), hence "
            "dedup_by_question. Columns: data_source (str), prompt (list of {content, role}; the user "
            "message wraps the question in DAPO's instructions, removed here), ability (str), "
            "reward_model ({ground_truth: str, style: str}), extra_info ({index: str}). Checked against "
            "the dataset card features."
        ),
    ),
}

#: Name of the default training dataset.
DEFAULT_TRAINING_DATASET = "dapo-math-17k"

#: The paper's six evaluation benchmarks.
BENCHMARKS: dict[str, DatasetSpec] = {
    "aime24": DatasetSpec(
        name="aime24",
        path="HuggingFaceH4/aime_2024",
        split="train",
        question_column="problem",
        answer_column="answer",
        notes="30 problems (AIME 2024 I+II). Columns id (int), problem, solution, answer (str), url, year. "
        "Checked against the dataset card.",
    ),
    "aime25": DatasetSpec(
        name="aime25",
        path="math-ai/aime25",
        split="test",
        question_column="problem",
        answer_column="answer",
        notes="30 problems (AIME 2025 I+II). Columns problem, answer, id; split 'test'. Checked against "
        "several published loaders (no dataset card with features found); answers converted to str.",
    ),
    "amc23": DatasetSpec(
        name="amc23",
        path="math-ai/amc23",
        split="test",
        question_column="question",
        answer_column="answer",
        notes="40 problems (AMC 12 2023). Columns question, answer (plus id, url); split 'test'. Column "
        "names checked against published loaders; the answer dtype is not confirmed (related copies store "
        "it as float64, e.g. 27.0), so answers are converted with answer_to_str ('27').",
    ),
    "math500": DatasetSpec(
        name="math500",
        path="HuggingFaceH4/MATH-500",
        split="test",
        question_column="problem",
        answer_column="answer",
        notes="500 problems. Columns problem, solution, answer, subject, level (int), unique_id. Checked "
        "against the dataset cards of verbatim copies and published loaders.",
    ),
    "minerva": DatasetSpec(
        name="minerva",
        path="math-ai/minervamath",
        split="test",
        question_column="question",
        answer_column="answer",
        notes="272 problems (Minerva Math / OCWCourses), stored as test.jsonl with question, answer. Checked "
        "against the repository file list, copies' dataset cards and published loaders.",
    ),
    "olympiadbench": DatasetSpec(
        name="olympiadbench",
        path="Hothan/OlympiadBench",
        config="OE_TO_maths_en_COMP",
        split="train",
        question_column="question",
        answer_column="final_answer",
        answer_transform="strip_math_delimiters",
        notes="OlympiadBench open-ended, text-only, English maths competition subset (675 problems; the "
        "only split is 'train'). final_answer is a list of strings such as ['$2^{1009}$'] (several for "
        "multi-answer problems): '$' removed, items joined with ', '. Other columns: id, solution (list), "
        "context, image_1..image_5, modality, difficulty, is_multiple_answer, unit, answer_type, error, "
        "question_type, subfield, subject, language. Checked against published loaders.",
    ),
}

#: avg@N samples per problem used in the paper's evaluation.
PAPER_SAMPLES_PER_PROBLEM: dict[str, int] = {
    "aime24": 32,
    "aime25": 32,
    "amc23": 32,
    "math500": 4,
    "minerva": 4,
    "olympiadbench": 4,
}

# --------------------------------------------------------------------------------------------------
# Prompt formatting and row conversion
# --------------------------------------------------------------------------------------------------


def build_prompt(question: str, suffix: str = PROMPT_SUFFIX) -> list[dict[str, str]]:
    """Build the TRL conversational prompt for one question.

    The user message is ``question.strip() + "\\n\\n" + suffix`` (:data:`PROMPT_SEPARATOR`, one blank
    line, between them); with an empty ``suffix`` it is just the stripped question.

    Args:
        question: Problem statement.
        suffix: Instruction appended after the question (default: the paper's :data:`PROMPT_SUFFIX`).

    Returns:
        ``[{"role": "user", "content": ...}]``.
    """
    question = str(question).strip()
    content = question + PROMPT_SEPARATOR + suffix if suffix else question
    return [{"role": "user", "content": content}]


def _transform(transform: str | Callable[[Any], Any] | None) -> Callable[[Any], Any] | None:
    if transform is None or callable(transform):
        return transform
    return TRANSFORMS[transform]


def _get_field(row: dict[str, Any], path: str) -> Any:
    """Value of ``path`` in ``row``: a column name, or a dotted path into dicts/lists."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def _top_column(path: str, columns: list[str]) -> str:
    return path if path in columns else path.split(".", 1)[0]


def _describe(spec: DatasetSpec) -> str:
    where = spec.path + (f" (config {spec.config!r})" if spec.config else "") + f", split {spec.split!r}"
    return f"dataset {spec.name!r} [{where}]"


def _check_columns(columns: list[str], first_row: dict[str, Any] | None, spec: DatasetSpec) -> None:
    """The question and answer columns exist (and a dotted path reaches into the first row)."""
    for role, path in (("question", spec.question_column), ("answer", spec.answer_column)):
        top = _top_column(path, columns)
        if top not in columns:
            raise ValueError(
                f"The {role} column {path!r} is missing from {_describe(spec)}; available columns: "
                f"{columns}. Choose another with {role}_column=..."
            )
        if top != path and first_row is not None:
            try:
                _get_field(first_row, path)
            except KeyError as exc:
                value = first_row[top]
                inside = sorted(value) if isinstance(value, dict) else type(value).__name__
                raise ValueError(
                    f"The {role} field {path!r} is missing from {_describe(spec)}: column {top!r} has no "
                    f"{str(exc)!r} (it holds {inside}); available columns: {columns}. Choose another with "
                    f"{role}_column=..."
                ) from None


#: Rows of a training set whose content is checked before training: `check_training_rows`.
CHECKED_ROWS = 8


class DatasetCheckError(ValueError):
    """A training set's rows cannot be trained on (`check_training_rows`)."""


def check_training_rows(columns: list[str], rows: list[dict[str, Any]], spec: DatasetSpec) -> None:
    """Check the first rows of a training set before anything is trained on them (or, for a local file, loaded).

    The set has rows, its question and answer columns exist, every row of `rows` has a question and a gold answer,
    and math-verify (which the reward parses gold answers with, see `stapo_trl.rewards.grade`) reads a mathematical
    expression in at least one of the answers: when it reads none, the column is not the answers (a question, a
    name). Raises `DatasetCheckError` naming the dataset, the column and the row.
    """
    if not rows:
        raise DatasetCheckError(f"{_describe(spec)} has no rows; accepted: a dataset with one problem per row.")
    try:
        _check_columns(columns, rows[0], spec)
    except ValueError as error:
        raise DatasetCheckError(str(error)) from None
    from .rewards.extraction import gold_to_latex
    from .rewards.verify import _parse_gold

    question_fn, answer_fn = _transform(spec.question_transform), _transform(spec.answer_transform)
    answers = []
    for index, row in enumerate(rows):
        question = _get_field(row, spec.question_column)
        question = question_fn(question) if question_fn is not None else question
        if question is None or not str(question).strip():
            raise DatasetCheckError(
                f"question_column {spec.question_column!r} of {_describe(spec)} is empty in row {index}; accepted: "
                "a column holding each problem's text (choose it with question_column=...)."
            )
        answer = _get_field(row, spec.answer_column)
        answers.append(answer_to_str(answer_fn(answer) if answer_fn is not None else answer))
        if gold_to_latex(answers[-1]) is None:
            raise DatasetCheckError(
                f"answer_column {spec.answer_column!r} of {_describe(spec)} is empty in row {index}; accepted: a column "
                "holding each problem's final answer, e.g. '42' or '\\frac{1}{2}' (choose it with answer_column=...)."
            )
    # math-verify returns the text itself last; an expression read from it comes before.
    if not any(len(_parse_gold(gold_to_latex(answer), 5)) > 1 for answer in answers):
        raise DatasetCheckError(
            f"answer_column {spec.answer_column!r} of {_describe(spec)}: math-verify reads no mathematical expression "
            f"in the first {len(answers)} answers (row 0: {answers[0][:60]!r}); accepted: a column holding each "
            "problem's final answer, e.g. '42' or '\\frac{1}{2}' (choose it with answer_column=...)."
        )


def read_first_rows(spec: DatasetSpec, num_rows: int = CHECKED_ROWS) -> tuple[list[str], list[dict[str, Any]]] | None:
    """The columns and the first `num_rows` rows of a local training file, read without `datasets` (which would
    write the whole file to its cache first); `None` for a Hub dataset or a folder of data files, whose rows are
    checked once `datasets` has loaded them."""
    path = os.path.expanduser(spec.path)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) and _is_saved_to_disk(path):
        dataset = load_raw_dataset(spec)  # memory-mapped where it lies, nothing is written
        return list(dataset.column_names), dataset.select(range(min(num_rows, len(dataset)))).to_list()
    if not os.path.isfile(path):
        return None
    if suffix in (".json", ".jsonl"):
        return _first_json_rows(path, num_rows)
    if suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = [row for _, row in zip(range(num_rows), reader)]
            return list(reader.fieldnames or []), rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path)
        batch = next(table.iter_batches(batch_size=num_rows), None)
        return table.schema_arrow.names, [] if batch is None else batch.to_pylist()
    return None


def _first_json_rows(path: str, num_rows: int) -> tuple[list[str], list[dict[str, Any]]] | None:
    """The first rows of a JSON Lines file, or of a JSON file holding a list of rows."""
    import json

    with open(path, encoding="utf-8") as handle:
        head = handle.read(1)
        while head and head.isspace():
            head = handle.read(1)
        handle.seek(0)
        if head == "[":
            rows = json.load(handle)[:num_rows]
        elif head == "{":
            rows = []
            for number, line in enumerate(handle, start=1):
                if len(rows) == num_rows:
                    break
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    if number == 1:
                        return None  # one JSON document, not JSON Lines: `datasets` reads it
                    raise ValueError(f"dataset file {path}: line {number} is not valid JSON ({error.msg}).") from None
        else:
            rows = []
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"dataset file {path}: rows must be JSON objects (one problem per row).")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, rows


def _convert_batch(batch: dict[str, list[Any]], spec: DatasetSpec, suffix: str) -> dict[str, list[Any]]:
    question_fn = _transform(spec.question_transform)
    answer_fn = _transform(spec.answer_transform)
    size = len(next(iter(batch.values()))) if batch else 0
    prompts: list[list[dict[str, str]]] = []
    answers: list[str] = []
    questions: list[str] = []
    for i in range(size):
        row = {key: values[i] for key, values in batch.items()}
        question = _get_field(row, spec.question_column)
        if question_fn is not None:
            question = question_fn(question)
        question = "" if question is None else str(question).strip()
        answer = _get_field(row, spec.answer_column)
        if answer_fn is not None:
            answer = answer_fn(answer)
        questions.append(question)
        prompts.append(build_prompt(question, suffix))
        answers.append(answer_to_str(answer))
    return {"prompt": prompts, "answer": answers, "__question": questions}


def _first_occurrences(dataset: Dataset, name: str) -> list[int]:
    keep: list[int] = []
    seen: dict[str, str] = {}
    conflicts = 0
    index = 0
    for batch in dataset.select_columns(["__question", "answer"]).iter(batch_size=10_000):
        for question, answer in zip(batch["__question"], batch["answer"]):
            previous = seen.get(question)
            if previous is None:
                seen[question] = answer
                keep.append(index)
            elif previous != answer:
                conflicts += 1
            index += 1
    if conflicts:
        logger.warning(
            "%s: %d duplicate rows have a different answer than the first occurrence of their question; "
            "kept the first occurrence.",
            name,
            conflicts,
        )
    return keep


def prepare_dataset(dataset: Dataset, spec: DatasetSpec, suffix: str = PROMPT_SUFFIX) -> Dataset:
    """Convert a raw dataset to the ``prompt`` (conversational) and ``answer`` (str) columns.

    All other columns are dropped. Questions and answers are read with ``spec.question_column`` /
    ``spec.answer_column`` (dotted paths allowed) and the spec's transforms; prompts are built with
    :func:`build_prompt`; answers are converted with :func:`answer_to_str` (numbers become strings).
    With ``spec.dedup_by_question`` only the first row of each distinct question is kept.

    Args:
        dataset: A ``datasets.Dataset`` (one split).
        spec: How to read it.
        suffix: Instruction appended to each question (default: :data:`PROMPT_SUFFIX`).

    Returns:
        A new ``datasets.Dataset`` with exactly the columns ``prompt`` and ``answer``.

    Raises:
        ValueError: If the question or answer column is missing; the message names the column, the
            dataset and the columns that exist.
    """
    from datasets import Dataset as HFDataset
    from datasets import Features, Value

    if not isinstance(dataset, HFDataset):
        kind = type(dataset).__name__
        hint = " (pick a split, e.g. dataset['train'])" if hasattr(dataset, "keys") else ""
        raise ValueError(f"prepare_dataset needs a datasets.Dataset for {_describe(spec)}, got {kind}{hint}")
    _check_columns(list(dataset.column_names), dataset[0] if len(dataset) > 0 else None, spec)
    needed = sorted({_top_column(spec.question_column, dataset.column_names),
                     _top_column(spec.answer_column, dataset.column_names)})
    # Explicit output features: without them, `map` keeps the source type of a same-named column
    # (a float `answer` column would turn "27" back into 27.0).
    features = Features(
        {
            "prompt": [{"role": Value("string"), "content": Value("string")}],
            "answer": Value("string"),
            "__question": Value("string"),
        }
    )
    prepared = dataset.select_columns(needed).map(
        _convert_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"spec": spec, "suffix": suffix},
        remove_columns=needed,
        features=features,
        desc=f"Preparing {spec.name}",
    )
    if spec.dedup_by_question:
        before = len(prepared)
        prepared = prepared.select(_first_occurrences(prepared, spec.name))
        logger.info("%s: de-duplicated %d rows to %d distinct questions", spec.name, before, len(prepared))
    return prepared.select_columns(["prompt", "answer"])


# --------------------------------------------------------------------------------------------------
# Registry lookup and loading
# --------------------------------------------------------------------------------------------------


def _resolve(
    name_or_path: str,
    registry: dict[str, DatasetSpec],
    kind: str,
    default_split: str,
    overrides: dict[str, Any],
) -> DatasetSpec:
    key = str(name_or_path).strip()
    spec = registry.get(key) or registry.get(key.lower())
    if spec is None:  # the Hub id of a registered dataset also selects its spec
        spec = next((s for s in registry.values() if s.path == key), None)
    if spec is None and ("/" in key or os.path.exists(os.path.expanduser(key))):
        spec = DatasetSpec(name=key, path=key, split=default_split, question_column="problem", answer_column="answer")
    if spec is not None:
        spec = spec.with_overrides(**overrides)
        if looks_like_local_path(spec.path) and not os.path.exists(os.path.expanduser(spec.path)):
            field = "dataset_path" if overrides.get("path") else "dataset_name"
            raise FileNotFoundError(
                f"{field}: no such local file or folder {spec.path!r} (it looks like a path, not a Hub id); accepted: "
                f"an existing path, a Hub dataset id (owner/name) or one of {sorted(registry)}."
            )
        return spec
    raise ValueError(
        f"Unknown {kind} dataset {name_or_path!r}. Accepted names: {sorted(registry)}; or give a Hub "
        "dataset id (owner/name) or an existing local path, with question_column=... and "
        "answer_column=... if they are not 'problem' and 'answer'."
    )


def looks_like_local_path(name_or_path: str) -> bool:
    """Whether a dataset argument is meant as a local path rather than a Hub id (`owner/name`): it starts with `/`,
    `.` or `~`, has more than one `/`, or ends with a data file extension (`.jsonl`, `.parquet`, ...)."""
    text = str(name_or_path)
    return (
        text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or os.path.splitext(text)[1].lower() in _FILE_BUILDERS
    )


def resolve_training_spec(name_or_path: str, **overrides: Any) -> DatasetSpec:
    """Return the :class:`DatasetSpec` for a training dataset.

    Args:
        name_or_path: A key of :data:`TRAINING_DATASETS` (case-insensitive) or the Hub id of one of them;
            otherwise a Hub id (``owner/name``) or an existing local path, read as a custom dataset with
            columns ``problem`` and ``answer`` and split ``train`` unless overridden.
        **overrides: :class:`DatasetSpec` fields to replace (``None`` values are ignored), e.g.
            ``config="en"`` or ``path="tests/fixtures/datasets/dapo-math-17k.jsonl"``.

    Raises:
        ValueError: For an unknown name (the message lists the accepted names) or an unknown field.
        FileNotFoundError: For an argument that looks like a local path (see :func:`looks_like_local_path`) and
            does not exist, so that it is not sent to the Hub as a dataset id.
    """
    return _resolve(name_or_path, TRAINING_DATASETS, "training", "train", overrides)


def resolve_benchmark_spec(name: str, **overrides: Any) -> DatasetSpec:
    """Return the :class:`DatasetSpec` for a benchmark (see :func:`resolve_training_spec`).

    Args:
        name: A key of :data:`BENCHMARKS` (case-insensitive) or the Hub id of one of them; otherwise a
            Hub id or an existing local path, read with columns ``problem``/``answer`` and split
            ``test`` unless overridden.
        **overrides: :class:`DatasetSpec` fields to replace (``None`` values are ignored).

    Raises:
        ValueError: For an unknown name (the message lists the accepted names) or an unknown field.
    """
    return _resolve(name, BENCHMARKS, "benchmark", "test", overrides)


_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "arrow",
}


def _is_saved_to_disk(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(folder, "state.json"))
        and os.path.isfile(os.path.join(folder, "dataset_info.json"))
    )


def load_raw_dataset(spec: DatasetSpec) -> Dataset:
    """Load the split ``spec.split`` of ``spec.path`` with ``datasets``, without converting it.

    A local file is read with the matching builder (``json`` for ``.json``/``.jsonl``, ``parquet``,
    ``csv``, ``arrow``) and becomes the split ``spec.split``; a ``save_to_disk`` folder is read with
    ``load_from_disk``; any other folder or a Hub id goes to ``datasets.load_dataset`` with
    ``spec.config`` and ``spec.split``. Local files and folders need no network.
    """
    import datasets

    path = os.path.expanduser(spec.path)
    if os.path.isfile(path):
        suffix = os.path.splitext(path)[1].lower()
        builder = _FILE_BUILDERS.get(suffix)
        if builder is None:
            raise ValueError(
                f"Cannot read {path!r} for {_describe(spec)}: unsupported file type {suffix!r} "
                f"(supported: {sorted(_FILE_BUILDERS)})"
            )
        return datasets.load_dataset(builder, data_files={spec.split: path}, split=spec.split)
    if os.path.isdir(path) and _is_saved_to_disk(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if spec.split not in loaded:
                raise ValueError(f"{_describe(spec)}: split {spec.split!r} not in {sorted(loaded)}")
            return loaded[spec.split]
        return loaded
    return datasets.load_dataset(path if os.path.isdir(path) else spec.path, name=spec.config, split=spec.split)


def load_training_dataset(
    name_or_path: str = DEFAULT_TRAINING_DATASET, *, suffix: str = PROMPT_SUFFIX, **overrides: Any
) -> Dataset:
    """Load and prepare a training dataset (columns ``prompt`` and ``answer``).

    Args:
        name_or_path: Registry name, Hub id or local path (see :func:`resolve_training_spec`).
        suffix: Instruction appended to each question (default: :data:`PROMPT_SUFFIX`).
        **overrides: :class:`DatasetSpec` fields to replace, e.g. ``path=`` a local fixture file.
    """
    spec = resolve_training_spec(name_or_path, **overrides)
    return prepare_dataset(load_raw_dataset(spec), spec, suffix=suffix)


def load_benchmark(name: str, *, suffix: str = PROMPT_SUFFIX, **overrides: Any) -> Dataset:
    """Load and prepare a benchmark (columns ``prompt`` and ``answer``).

    Args:
        name: Benchmark name, Hub id or local path (see :func:`resolve_benchmark_spec`).
        suffix: Instruction appended to each question (default: :data:`PROMPT_SUFFIX`).
        **overrides: :class:`DatasetSpec` fields to replace, e.g. ``path=`` a local fixture file.
    """
    spec = resolve_benchmark_spec(name, **overrides)
    return prepare_dataset(load_raw_dataset(spec), spec, suffix=suffix)
