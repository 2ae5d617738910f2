"""Tests of the dataset registry, prompt formatting and loading (stapo_trl.data), fully offline."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
from datasets import Dataset, DatasetDict

from stapo_trl import data
from stapo_trl.data import (
    BENCHMARKS,
    DEFAULT_TRAINING_DATASET,
    PAPER_SAMPLES_PER_PROBLEM,
    PROMPT_SUFFIX,
    TRAINING_DATASETS,
    DatasetSpec,
    answer_to_str,
    build_prompt,
    load_benchmark,
    load_training_dataset,
    prepare_dataset,
    resolve_benchmark_spec,
    resolve_training_spec,
)
from stapo_trl.rewards import grade_batch

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
ALL_SPECS = {**TRAINING_DATASETS, **BENCHMARKS}

# Gold answers of each fixture after preparation (and de-duplication).
EXPECTED_ANSWERS = {
    "dapo-math-17k": ["58", "15", "13", "60", "4"],
    "dapo-math-17k-original": ["12", "210", "29"],
    "aime24": ["8", "216", "2000", "700"],
    "aime25": ["78", "13", "130"],
    "amc23": ["1", "108", "9"],  # stored as floats (27.0-style) in the fixture
    "math500": ["\\frac{1}{2}", "\\sqrt{2}", "(2, -1)", "3", "\\frac{2}{3}"],
    "minerva": ["10", "9", "4", "0.5"],
    "olympiadbench": ["2, 3", "6", "4", "\\frac{9}{10}"],  # from lists such as ["$2$", "$3$"]
}

DAPO_WRAPPER_MARKERS = ("Solve the following math problem", "Remember to put your answer")


def fixture(name: str) -> str:
    return str(FIXTURES / f"{name}.jsonl")


def load_fixture(name: str, **kwargs) -> Dataset:
    if name in TRAINING_DATASETS:
        return load_training_dataset(name, path=fixture(name), **kwargs)
    return load_benchmark(name, path=fixture(name), **kwargs)


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in Path(fixture(name)).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# Every registered dataset prepares its fixture correctly
# --------------------------------------------------------------------------------------------------


def test_every_registered_dataset_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("*.jsonl")) == sorted(ALL_SPECS)


@pytest.mark.parametrize("name", list(ALL_SPECS))
def test_registered_spec_prepares_its_fixture(name):
    prepared = load_fixture(name)
    assert prepared.column_names == ["prompt", "answer"]
    assert [row["answer"] for row in prepared] == EXPECTED_ANSWERS[name]
    for row in prepared:
        assert isinstance(row["answer"], str) and row["answer"]
        (message,) = row["prompt"]
        assert message["role"] == "user"
        question, separator, suffix = message["content"].rpartition("\n\n")
        assert separator == "\n\n" and suffix == PROMPT_SUFFIX
        assert question and question == question.strip()
        assert not any(marker in message["content"] for marker in DAPO_WRAPPER_MARKERS)


@pytest.mark.parametrize("name", list(ALL_SPECS))
def test_fixture_answers_are_gradeable(name):
    """Other tests and the CPU demo grade against these fixtures: each gold must verify against itself."""
    answers = load_fixture(name)["answer"]
    answers = list(answers)
    assert all(grade_batch([f"The answer is \\boxed{{{a}}}." for a in answers], answers))
    assert not any(grade_batch(["The answer is \\boxed{123456789}." for _ in answers], answers))


def test_fixtures_have_the_registered_columns():
    for name, spec in ALL_SPECS.items():
        rows = fixture_rows(name)
        assert 3 <= len(rows) <= 6
        for row in rows:
            assert spec.question_column.split(".")[0] in row
            assert spec.answer_column.split(".")[0] in row


def test_dapo_question_text_is_unwrapped():
    raw = fixture_rows("dapo-math-17k")[0]["prompt"]
    assert raw.startswith("Solve the following math problem")
    prompt = load_fixture("dapo-math-17k")[0]["prompt"][0]["content"]
    assert prompt == (
        "Let $x$ and $y$ be positive real numbers with $x + y = 10$ and $xy = 21$. Find $x^2 + y^2$."
        "\n\n" + PROMPT_SUFFIX
    )


def test_original_dapo_is_deduplicated_by_question_keeping_first_occurrences():
    rows = fixture_rows("dapo-math-17k-original")
    assert len(rows) == 6
    prepared = load_fixture("dapo-math-17k-original")
    assert len(prepared) == 3
    questions = [row["prompt"][0]["content"].split("\n\n")[0] for row in prepared]
    assert len(set(questions)) == 3
    assert questions[0].startswith("What is the smallest integer")


def test_dedup_keeps_first_answer_on_conflicts(caplog):
    rows = [
        {"problem": "Q1", "answer": "1"},
        {"problem": "Q2", "answer": "2"},
        {"problem": "Q1", "answer": "999"},
        {"problem": " Q1 ", "answer": "1"},
    ]
    spec = DatasetSpec("toy", "toy", "train", "problem", "answer", dedup_by_question=True)
    with caplog.at_level("WARNING", logger="stapo_trl.data"):
        prepared = prepare_dataset(Dataset.from_list(rows), spec)
    assert list(prepared["answer"]) == ["1", "2"]
    assert "1 duplicate rows have a different answer" in caplog.text


def test_no_dedup_unless_asked():
    rows = [{"problem": "Q", "answer": "1"}] * 3
    spec = DatasetSpec("toy", "toy", "train", "problem", "answer")
    assert len(prepare_dataset(Dataset.from_list(rows), spec)) == 3


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_missing_column_error_names_column_dataset_and_available_columns():
    wrong_shape = Dataset.from_list([{"question": "What is 1+1?", "solution": "2"}])
    with pytest.raises(ValueError) as info:
        prepare_dataset(wrong_shape, BENCHMARKS["aime24"])
    message = str(info.value)
    assert "'problem'" in message and "aime24" in message
    assert "['question', 'solution']" in message


def test_missing_answer_column_error():
    wrong_shape = Dataset.from_list([{"problem": "What is 1+1?", "solution": "2"}])
    with pytest.raises(ValueError, match=r"answer column 'answer' is missing.*\['problem', 'solution'\]"):
        prepare_dataset(wrong_shape, BENCHMARKS["math500"])


def test_missing_nested_field_error():
    rows = [{"prompt": [{"role": "user", "content": "Q"}], "reward_model": {"style": "rule"}}]
    with pytest.raises(ValueError) as info:
        prepare_dataset(Dataset.from_list(rows), TRAINING_DATASETS["dapo-math-17k-original"])
    message = str(info.value)
    assert "reward_model.ground_truth" in message and "ground_truth" in message
    assert "dapo-math-17k-original" in message and "['style']" in message


def test_prepare_dataset_rejects_a_dataset_dict():
    dataset = DatasetDict({"train": Dataset.from_list([{"problem": "Q", "answer": "1"}])})
    with pytest.raises(ValueError, match="pick a split"):
        prepare_dataset(dataset, BENCHMARKS["math500"])


def test_unknown_names_list_the_accepted_ones():
    with pytest.raises(ValueError) as info:
        resolve_training_spec("dapo-17k")
    for name in TRAINING_DATASETS:
        assert name in str(info.value)
    with pytest.raises(ValueError) as info:
        resolve_benchmark_spec("aime2024")
    for name in BENCHMARKS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="Accepted names"):
        load_benchmark("no-such-benchmark")


def test_unknown_transform_and_override_fields_are_rejected():
    with pytest.raises(ValueError, match="known transforms"):
        DatasetSpec("x", "x", "train", "q", "a", question_transform="no_such_transform")
    with pytest.raises(ValueError, match="Unknown DatasetSpec field"):
        resolve_benchmark_spec("aime24", question_col="q")


def test_unsupported_local_file_type(tmp_path):
    path = tmp_path / "problems.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_benchmark(str(path))


# --------------------------------------------------------------------------------------------------
# Resolution and overrides
# --------------------------------------------------------------------------------------------------


def test_overrides_replace_fields_and_ignore_none():
    spec = resolve_benchmark_spec("aime24", split="validation", config=None, question_column=None)
    assert spec.split == "validation"
    assert spec.question_column == "problem" and spec.config is None
    assert BENCHMARKS["aime24"].split == "train"  # registry untouched
    assert resolve_training_spec("dapo-math-17k", config="en").config == "en"
    base = BENCHMARKS["math500"]
    assert base.with_overrides() is base
    assert base.with_overrides(split=None) is base
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.split = "train"  # type: ignore[misc]


def test_names_are_case_insensitive_and_hub_ids_of_registered_datasets_resolve():
    assert resolve_benchmark_spec("AIME24") == BENCHMARKS["aime24"]
    assert resolve_benchmark_spec("HuggingFaceH4/MATH-500") == BENCHMARKS["math500"]
    assert resolve_training_spec("BytedTsinghua-SIA/DAPO-Math-17k") == TRAINING_DATASETS["dapo-math-17k-original"]


def test_custom_hub_id_and_local_path_defaults(tmp_path):
    custom = resolve_training_spec("someone/my-math")
    assert (custom.path, custom.split, custom.question_column, custom.answer_column) == (
        "someone/my-math", "train", "problem", "answer")
    bench = resolve_benchmark_spec("someone/my-bench", question_column="question")
    assert (bench.split, bench.question_column, bench.answer_column) == ("test", "question", "answer")
    local = tmp_path / "problems.jsonl"
    local.write_text('{"problem": "1+1?", "answer": 2}\n')
    assert resolve_training_spec(str(local)).path == str(local)


def test_default_training_dataset_and_registry_entries():
    assert DEFAULT_TRAINING_DATASET == "dapo-math-17k"
    dapo = TRAINING_DATASETS["dapo-math-17k"]
    assert (dapo.path, dapo.config, dapo.split, dapo.question_column, dapo.answer_column) == (
        "open-r1/DAPO-Math-17k-Processed", "all", "train", "prompt", "solution")
    original = TRAINING_DATASETS["dapo-math-17k-original"]
    assert original.path == "BytedTsinghua-SIA/DAPO-Math-17k" and original.dedup_by_question
    assert original.answer_column == "reward_model.ground_truth"
    assert set(BENCHMARKS) == {"aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"}
    assert PAPER_SAMPLES_PER_PROBLEM == {
        "aime24": 32, "aime25": 32, "amc23": 32, "math500": 4, "minerva": 4, "olympiadbench": 4}
    for name, spec in ALL_SPECS.items():
        assert spec.name == name and spec.notes


def test_specs_are_picklable():
    for spec in ALL_SPECS.values():
        assert pickle.loads(pickle.dumps(spec)) == spec


# --------------------------------------------------------------------------------------------------
# Prompt formatting
# --------------------------------------------------------------------------------------------------


def test_build_prompt_format():
    assert PROMPT_SUFFIX == "Please reason step by step, and put your final answer within \\boxed{}."
    assert build_prompt("  What is 1+1?\n") == [
        {"role": "user", "content": "What is 1+1?\n\nPlease reason step by step, and put your final answer within \\boxed{}."}
    ]
    assert build_prompt("Q", suffix="") == [{"role": "user", "content": "Q"}]
    assert build_prompt("Q", suffix="Answer briefly.") == [{"role": "user", "content": "Q\n\nAnswer briefly."}]


def test_custom_suffix_reaches_the_prompts():
    prepared = load_fixture("aime25", suffix="")
    assert prepared[0]["prompt"][0]["content"] == fixture_rows("aime25")[0]["problem"]


@pytest.mark.parametrize(
    "value, expected",
    [(27.0, "27"), (2.5, "2.5"), (12, "12"), ("  \\frac{1}{2} ", "\\frac{1}{2}"), (None, ""), (["2", 3.0], "2, 3")],
)
def test_answer_to_str(value, expected):
    assert answer_to_str(value) == expected


def test_transforms():
    wrapped = data._DAPO_PREFIX + "\n\nWhat is 2+2?\n\n" + data._DAPO_SUFFIX
    assert data.strip_dapo_instructions(wrapped) == "What is 2+2?"
    assert data.strip_dapo_instructions("What is 2+2?") == "What is 2+2?"
    assert data.dapo_chat_question([{"role": "system", "content": "s"}, {"role": "user", "content": wrapped}]) == "What is 2+2?"
    assert data.strip_math_delimiters(["$2^{1009}$", "$3$"]) == "2^{1009}, 3"


# --------------------------------------------------------------------------------------------------
# Loading local files offline
# --------------------------------------------------------------------------------------------------


def test_load_local_files_of_several_formats(tmp_path):
    rows = [{"problem": "What is 2+3?", "answer": 5}, {"problem": "What is 1/2+1/2?", "answer": 1}]
    source = Dataset.from_list(rows)
    source.to_parquet(str(tmp_path / "problems.parquet"))
    source.to_json(str(tmp_path / "problems.jsonl"))
    source.to_csv(str(tmp_path / "problems.csv"), index=False)
    source.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"test": source}).save_to_disk(str(tmp_path / "saved_dict"))
    for path in ("problems.parquet", "problems.jsonl", "problems.csv", "saved", "saved_dict"):
        prepared = load_benchmark(str(tmp_path / path))
        assert list(prepared["answer"]) == ["5", "1"], path
        assert prepared[0]["prompt"][0]["content"].startswith("What is 2+3?\n\n")
    prepared = load_training_dataset(str(tmp_path / "problems.parquet"))
    assert len(prepared) == 2


def test_load_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "Q1", "answer": "1"}\n{"question": "Q2", "answer": "2"}\n')
    prepared = load_benchmark("minerva", path=str(folder))
    assert list(prepared["answer"]) == ["1", "2"]


def test_fixture_stands_in_for_a_hub_benchmark_with_custom_split():
    prepared = load_benchmark("olympiadbench", path=fixture("olympiadbench"), split="validation")
    assert len(prepared) == 4
