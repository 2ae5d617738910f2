"""Tests of the grading function and the reward functions (stapo_trl.rewards).

``GRADING_CASES`` is shared: the evaluation tests load this table and check that the evaluation harness
grades every case exactly as the training reward does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapo_trl.rewards import (
    PROBLEM_KEYS,
    GradingWarning,
    accuracy_reward,
    boxed_reward,
    completion_text,
    configure_grader,
    extract_boxed_answer,
    grade,
    grade_batch,
    grade_with_status,
    grading,
    reward_problem_counts,
)
from stapo_trl.rewards import pool as grading_pool
from stapo_trl.rewards.settings import GraderSettings

# (completion text, gold answer, expected grade). Plain-text completions, so that any consumer (the
# evaluation harness included) can feed them through its own pipeline.
GRADING_CASES: list[tuple[str, str, bool]] = [
    # correct / wrong / no box
    ("Adding the two gives $x^2 + y^2 = 58$, so the answer is \\boxed{58}.", "58", True),
    ("So the answer is \\boxed{57}.", "58", False),
    ("The answer is 58.", "58", False),
    ("", "58", False),
    ("\\boxed{-3}", "3", False),
    # equivalent forms
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{1/2}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{2}{3}}", "\\frac{1}{2}", False),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", True),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{\\pi}", "\\pi", True),
    ("\\boxed{3.14}", "\\pi", False),
    ("\\boxed{1.50}", "\\frac{3}{2}", True),
    ("\\boxed{3}", "3.0", True),
    # tuples, sets, intervals
    ("\\boxed{(2, -1)}", "(2, -1)", True),
    ("\\boxed{(-1, 2)}", "(2, -1)", False),
    ("\\boxed{\\{1, 2\\}}", "\\{1,2\\}", True),
    ("\\boxed{[1, 2)}", "[1,2)", True),
    ("\\boxed{(1, 2]}", "[1,2)", False),
    ("\\boxed{3, 2}", "2, 3", True),
    # numbers with commas and units
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{1{,}000{,}000}", "1000000", True),
    ("\\boxed{10 \\text{ cm}}", "10", True),
    ("\\boxed{7 \\text{ meters}}", "7", True),
    ("\\boxed{45^\\circ}", "45", True),
    # box syntax: spacing, \fbox, math mode, gold delimiters
    ("\\boxed {12}", "12", True),
    ("\\fbox{12}", "12", True),
    ("$\\boxed{\\pi}$", "\\pi", True),
    ("\\boxed{34}", "$34$", True),
    ("\\boxed{34}", "\\boxed{34}", True),
    # several boxes: the last one counts
    ("First \\boxed{3}; on reflection the answer is \\boxed{4}.", "4", True),
    ("First \\boxed{4}; on reflection the answer is \\boxed{3}.", "4", False),
    # nested boxes: the innermost (last-opened) box counts
    ("\\boxed{\\boxed{5}}", "5", True),
    ("\\boxed{\\text{answer: }\\boxed{\\frac{1}{3}}}", "\\frac{1}{3}", True),
    # an unclosed (truncated) trailing box is skipped; a lone unclosed box is no box
    ("So \\boxed{5}. Wait, maybe \\boxed{\\frac{7", "5", True),
    ("The answer is \\boxed{5", "5", False),
    ("\\boxed{}", "0", False),
]

CONVERSATIONAL_CASES = [
    ([{"role": "assistant", "content": "Thus \\boxed{7}."}], "7", True),
    ([{"role": "assistant", "content": "Thus \\boxed{8}."}], "7", False),
    ([{"role": "assistant", "content": [{"type": "text", "text": "Thus "}, {"type": "text", "text": "\\boxed{7}"}]}], "7", True),
    (
        [
            {"role": "assistant", "content": "Let me compute. \\boxed{1}"},
            {"role": "tool", "content": "\\boxed{2}"},
            {"role": "assistant", "content": "So the answer is \\boxed{3}."},
        ],
        "3",
        True,
    ),
    ([{"role": "assistant", "content": None}], "7", False),
    ({"role": "assistant", "content": "\\boxed{7}"}, "7", True),
]


@pytest.fixture(scope="module", autouse=True)
def warm_grader():
    """Start a grading worker once, so that timing assertions do not include its start-up."""
    assert grade("\\boxed{1}", "1")
    yield


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradingWarning)
        yield


# --------------------------------------------------------------------------------------------------
# The grading table
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("completion, gold, expected", GRADING_CASES)
def test_grading_cases(completion, gold, expected):
    assert grade(completion, gold) is expected


def test_grading_cases_through_the_rewards_in_one_batch():
    completions = [c for c, _, _ in GRADING_CASES]
    golds = [g for _, g, _ in GRADING_CASES]
    expected = [e for *_, e in GRADING_CASES]
    assert grade_batch(completions, golds) == expected
    assert boxed_reward(completions, answer=golds) == [1.0 if e else -1.0 for e in expected]
    assert accuracy_reward(completions, answer=golds) == [1.0 if e else 0.0 for e in expected]


@pytest.mark.parametrize("completion, gold, expected", CONVERSATIONAL_CASES)
def test_conversational_completions(completion, gold, expected):
    assert grade(completion, gold) is expected


def test_numeric_gold_values():
    assert grade("\\boxed{27}", 27.0)
    assert grade("\\boxed{27}", 27)
    assert grade("\\boxed{2, 3}", ["2", "3"])
    assert not grade("\\boxed{27}", 28)


def test_completion_text():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text([{"role": "user", "content": "only user"}]) == "only user"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}]}]) == "x"
    assert completion_text({"role": "assistant", "content": "single"}) == "single"
    for odd in (None, 3, [], [1, 2], {"content": 5}, object()):
        assert completion_text(odd) == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{42}", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ 42 }", "42"),
        ("a \\boxed{1} b \\boxed{2} c", "2"),
        ("\\boxed {3}", "3"),
        ("\\boxed\n{3}", "3"),
        ("\\fbox{4}", "4"),
        ("\\boxed{\\boxed{5}}", "5"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{a_{b_{c}}}", "a_{b_{c}}"),
        ("\\boxed{6} then \\boxed{7", "6"),
        ("\\boxed{}", ""),
        ("\\boxed{", None),
        ("\\boxed{{}", None),
        ("no box at all {}", None),
        ("\\boxed 5", None),
        ("", None),
    ],
)
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


def test_extract_boxed_answer_non_string():
    assert extract_boxed_answer(None) is None
    assert extract_boxed_answer(12) is None


# --------------------------------------------------------------------------------------------------
# Pathological inputs: bounded time, scored wrong, never raise
# --------------------------------------------------------------------------------------------------

BUDGET_S = 1.0
# Worker budget + the caller's hard deadline grace (1 s + budget / 2) + scheduling slack on a busy box.
BOUND_S = BUDGET_S + 1.0 + BUDGET_S / 2 + 1.5

NON_UTF8_LOOKING = b"\xff\xfe\x00\x9c garbage \xc3\x28".decode("utf-8", "surrogateescape")

PATHOLOGICAL = {
    "1MB_text_then_box": ("x" * 1_000_000 + " \\boxed{7}", "8", {"wrong"}),
    "1MB_of_open_braces": ("\\boxed{" + "{" * 1_000_000, "1", {"no_box"}),
    "1MB_inside_a_box": ("\\boxed{" + "1+" * 500_000 + "1}", "1", {"too_complex"}),
    "100k_unclosed_boxes": ("\\boxed{" * 100_000, "1", {"no_box"}),
    "braces_10k_deep": ("\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1", {"too_complex"}),
    "braces_15_deep": ("\\boxed{" + "{" * 15 + "1" + "}" * 15 + "}", "1", {"timeout", "wrong"}),
    "unclosed_box": ("The answer is \\boxed{", "1", {"no_box"}),
    "power_tower": ("\\boxed{9^{9^{9^{9^{9}}}}}", "1", {"timeout", "wrong", "error"}),
    "huge_factorial": ("\\boxed{(10^{10})!}", "1", {"timeout", "wrong", "error"}),
    "power_tower_gold": ("\\boxed{2}", "9^{9^{9^{9^{9}}}}", {"timeout", "wrong", "error"}),
    "non_utf8_looking": (NON_UTF8_LOOKING + "\\boxed{" + NON_UTF8_LOOKING + "}", "1", {"wrong", "error"}),
    "control_characters": ("\\boxed{\x00\x01\x02\x7f}", "1", {"wrong", "error"}),
    "empty_completion": ("", "1", {"no_box"}),
    "empty_gold": ("\\boxed{1}", "", {"unparseable_gold"}),
    "none_completion": (None, "1", {"no_box"}),
}


@pytest.mark.filterwarnings("ignore::stapo_trl.rewards.GradingWarning")
@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_inputs_are_bounded_and_wrong(name):
    completion, gold, statuses = PATHOLOGICAL[name]
    start = time.monotonic()
    correct, status = grade_with_status(completion, gold, timeout_s=BUDGET_S)
    elapsed = time.monotonic() - start
    assert correct is False
    assert status in statuses
    assert elapsed < BOUND_S, f"{name} took {elapsed:.2f}s"


@pytest.mark.filterwarnings("ignore::stapo_trl.rewards.GradingWarning")
def test_pathological_batch_through_the_reward():
    completions = [c for c, _, _ in PATHOLOGICAL.values()]
    golds = [g for _, g, _ in PATHOLOGICAL.values()]
    configure_grader(timeout_s=BUDGET_S)
    try:
        start = time.monotonic()
        assert boxed_reward(completions, answer=golds) == [-1.0] * len(completions)
        # Each entry is bounded by BOUND_S; the batch is spread over the workers.
        assert time.monotonic() - start < BOUND_S * len(completions)
    finally:
        configure_grader(timeout_s=GraderSettings().timeout_s)


def test_a_stuck_worker_is_killed_at_the_hard_deadline_and_replaced():
    assert grade("\\boxed{2}", "2")
    pool = grading_pool.get_pool()
    worker = pool._idle[-1]  # the worker the next sequential call takes
    os.kill(worker.proc.pid, signal.SIGSTOP)  # stuck where its own timer cannot help
    start = time.monotonic()
    assert grade_with_status("\\boxed{2}", "2", timeout_s=0.5) == (False, "timeout")
    assert time.monotonic() - start < 0.5 + 1.0 + 0.25 + 1.0
    assert worker.proc.poll() is not None  # killed
    assert worker not in pool._idle
    assert grade("\\boxed{2}", "2")  # another worker takes over


def test_a_dead_worker_is_replaced():
    assert grade("\\boxed{2}", "2")
    pool = grading_pool.get_pool()
    for worker in list(pool._idle):
        worker.proc.kill()
        worker.proc.wait()
    assert grade_with_status("\\boxed{2}", "2") == (True, "correct")


def _idle_worker():
    assert grade("\\boxed{2}", "2")
    return grading_pool.get_pool()._idle[-1]


@pytest.mark.skipif(not os.path.exists("/proc/self/limits"), reason="reads /proc")
def test_a_worker_runs_under_the_memory_limit():
    worker = _idle_worker()
    with open(f"/proc/{worker.proc.pid}/limits") as limits:
        address_space = next(line for line in limits if line.startswith("Max address space")).split()
    assert int(address_space[3]) == int(address_space[4]) == grading_pool.WORKER_MEMORY_LIMIT_BYTES


@pytest.mark.skipif(not os.path.exists("/proc/self/cmdline"), reason="reads /proc")
def test_a_worker_is_a_fresh_interpreter_that_imports_neither_the_package_nor_main():
    worker = _idle_worker()
    with open(f"/proc/{worker.proc.pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().decode().split("\0")[:-1]
    # A new `python -c` process (not a fork of this one), running the grading file by its path.
    assert argv[0] == sys.executable and argv[1] == "-c" and argv[3] == grading_pool._WORKER_FILE
    # A fork of a trainer would carry its mapped libraries; the worker maps none of torch's.
    import torch  # noqa: F401 - the caller has torch loaded, as a trainer does

    with open(f"/proc/{os.getpid()}/maps") as maps:
        assert "libtorch" in maps.read()
    with open(f"/proc/{worker.proc.pid}/maps") as maps:
        assert "libtorch" not in maps.read()


# --------------------------------------------------------------------------------------------------
# Threads and backends
# --------------------------------------------------------------------------------------------------


def test_grade_from_a_thread():
    results = {}

    def run():
        results["ok"] = grade("\\boxed{\\frac{1}{2}}", "0.5")
        start = time.monotonic()
        results["tower"] = grade_with_status("\\boxed{9^{9^{9^{9^{9}}}}}", "1", timeout_s=BUDGET_S)
        results["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results["ok"] is True
    assert results["tower"][0] is False
    assert results["elapsed"] < BOUND_S


def test_grade_from_a_thread_pool():
    cases = GRADING_CASES * 3
    with ThreadPoolExecutor(max_workers=4) as executor:
        got = list(executor.map(lambda case: grade(case[0], case[1]), cases))
    assert got == [expected for *_, expected in cases]


def test_inline_backend_agrees_and_works_off_the_main_thread():
    configure_grader(backend="inline")
    try:
        sample = GRADING_CASES[:12]
        assert [grade(c, g) for c, g, _ in sample] == [e for *_, e in sample]
        with ThreadPoolExecutor(max_workers=2) as executor:
            got = list(executor.map(lambda case: grade(case[0], case[1]), sample))
        assert got == [e for *_, e in sample]
    finally:
        configure_grader(backend="process")


def test_configure_grader_rejects_bad_values():
    with pytest.raises(ValueError):
        configure_grader(backend="threads")
    with pytest.raises(ValueError):
        configure_grader(timeout_s=0)
    with pytest.raises(ValueError):
        configure_grader(max_workers=0)


# --------------------------------------------------------------------------------------------------
# Counters and warnings
# --------------------------------------------------------------------------------------------------


def test_problem_counts_tally_and_reset(quiet):
    reward_problem_counts()  # start a fresh window
    grade("no box here", "1")
    grade("\\boxed{1}", "")
    grade("\\boxed{" + "1" * 5000 + "}", "1")
    grade("\\boxed{1}", "1")
    grade("\\boxed{2}", "1")
    counts = reward_problem_counts()
    assert set(counts) == {"graded", *PROBLEM_KEYS}
    assert counts["graded"] == 5
    assert counts["no_box"] == 1
    assert counts["unparseable_gold"] == 1
    assert counts["too_complex"] == 1
    assert counts["timeout"] == counts["error"] == 0
    assert reward_problem_counts() == dict.fromkeys(counts, 0)
    grade("nothing", "1")
    assert reward_problem_counts(reset=False)["no_box"] == 1
    assert reward_problem_counts()["no_box"] == 1


def test_problem_counts_are_thread_safe():
    reward_problem_counts()
    with ThreadPoolExecutor(max_workers=8) as executor:
        list(executor.map(lambda i: grade("no box", "1"), range(400)))
    counts = reward_problem_counts()
    assert counts["graded"] == counts["no_box"] == 400


@pytest.mark.parametrize("bad_gold", ["", "   ", None, "}{", "\\text{}"])
def test_unparseable_gold_warns_once_per_value(bad_gold):
    grading._warned_golds.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert grade("\\boxed{1}", bad_gold) is False
        assert grade("\\boxed{2}", bad_gold) is False
        assert boxed_reward(["\\boxed{1}"] * 3, answer=[bad_gold] * 3) == [-1.0] * 3
    relevant = [w for w in caught if issubclass(w.category, GradingWarning)]
    assert len(relevant) == 1
    assert repr(bad_gold) in str(relevant[0].message)


def test_distinct_unparseable_golds_each_warn():
    grading._warned_golds.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grade("\\boxed{1}", "")
        grade("\\boxed{1}", "}{")
        grade("\\boxed{1}", "")
    assert len([w for w in caught if issubclass(w.category, GradingWarning)]) == 2


# --------------------------------------------------------------------------------------------------
# Fuzzing: never raises, always a valid value
# --------------------------------------------------------------------------------------------------

LATEXISH = st.text(alphabet="0123456789+-*/^_{}()[]\\.,=xyz frac sqrt boxed pi $", max_size=40)
COMPLETIONS = st.one_of(
    st.text(max_size=200),
    st.builds(lambda a, b, c: f"{a}\\boxed{{{b}}}{c}", st.text(max_size=40), LATEXISH, st.text(max_size=20)),
    st.builds(lambda b: [{"role": "assistant", "content": f"\\boxed{{{b}}}"}], LATEXISH),
)
GOLDS = st.one_of(LATEXISH, st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True), st.none())


@pytest.mark.filterwarnings("ignore::stapo_trl.rewards.GradingWarning")
@settings(max_examples=60, deadline=6000, suppress_health_check=[HealthCheck.too_slow])
@given(completion=COMPLETIONS, gold=GOLDS)
def test_fuzz_grade_never_raises(completion, gold):
    correct, status = grade_with_status(completion, gold, timeout_s=BUDGET_S)
    assert isinstance(correct, bool)
    assert status in {"correct", "wrong", *PROBLEM_KEYS}
    assert correct == (status == "correct")


@pytest.mark.filterwarnings("ignore::stapo_trl.rewards.GradingWarning")
@settings(max_examples=25, deadline=15000, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(COMPLETIONS, GOLDS), min_size=1, max_size=6))
def test_fuzz_boxed_reward_values(pairs):
    completions = [c for c, _ in pairs]
    golds = [g for _, g in pairs]
    values = boxed_reward(completions, answer=golds)
    assert len(values) == len(pairs)
    assert set(values) <= {-1.0, 1.0}
    assert all(isinstance(v, float) for v in values)


# --------------------------------------------------------------------------------------------------
# Called as TRL calls reward functions
# --------------------------------------------------------------------------------------------------


def test_rewards_called_like_trl():
    """Mirror GRPOTrainer._calculate_rewards (TRL 1.16): every dataset column except prompt/completion
    becomes a keyword (here `answer` and `level`), plus trainer_state, log_extra and log_metric."""
    prompts = [[{"role": "user", "content": "What is 1+1?\n\nPlease reason step by step..."}]] * 4
    completions = [
        [{"role": "assistant", "content": "1+1 = \\boxed{2}"}],
        [{"role": "assistant", "content": "I think \\boxed{3}"}],
        [{"role": "assistant", "content": "no final answer"}],
        [{"role": "assistant", "content": "\\boxed{\\frac{4}{2}}"}],
    ]
    inputs = [{"prompt": p, "answer": "2", "level": 1} for p in prompts]
    keys = [key for key in inputs[0] if key not in ["prompt", "completion", "completion_ids"]]
    reward_kwargs = {key: [example[key] for example in inputs] for key in keys}
    reward_kwargs["trainer_state"] = object()
    reward_kwargs["log_extra"] = lambda column, values: None
    reward_kwargs["log_metric"] = lambda name, value: None
    completion_ids = [[1, 2, 3]] * 4

    got = boxed_reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)
    assert got == [1.0, -1.0, -1.0, 1.0]
    got = accuracy_reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)
    assert got == [1.0, 0.0, 0.0, 1.0]
    # TRL names reward metrics after the function (`getattr(func, "__name__", ...)`).
    assert boxed_reward.__name__ == "boxed_reward" and accuracy_reward.__name__ == "accuracy_reward"


def test_rewards_are_picklable():
    import pickle

    assert pickle.loads(pickle.dumps(boxed_reward)) is boxed_reward
    assert pickle.loads(pickle.dumps(accuracy_reward)) is accuracy_reward


def test_reward_argument_errors():
    with pytest.raises(ValueError, match="answer"):
        boxed_reward(["\\boxed{1}"])
    with pytest.raises(ValueError, match="2 completions"):
        boxed_reward(["\\boxed{1}", "\\boxed{2}"], answer=["1"])
    with pytest.raises(ValueError, match="single string"):
        accuracy_reward(["\\boxed{1}"], answer="1")
    with pytest.raises(ValueError):
        grade_batch(["a"], [])
    assert boxed_reward([], answer=[]) == []
