"""Evaluation harness: metrics, resume, CLI, backends, training callback (all offline, CPU, fast)."""

import functools
import importlib.util
import itertools
import json
import os
import shutil
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import tiny_model

from stapo_trl import evaluation as ev
from stapo_trl.evaluate import main
from stapo_trl.evaluation import pipeline
from stapo_trl.tiny import build_addition_tokenizer

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
DATASETS = FIXTURES / "datasets"
EVAL_FIXTURES = FIXTURES / "eval"
ALL_BENCHMARKS = ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The models here are tiny: one thread is as fast, and it does not stall when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Scripted generators
# ----------------------------------------------------------------------------------------------------------------


class Preempted(RuntimeError):
    pass


class ScriptedGenerator:
    """Returns scripted completions: sample i of prompt p is `script[p][i % len(script[p])]` ((text, num_tokens)).

    Counts its calls and raises `Preempted` on the call after `fail_after` successful ones.
    """

    def __init__(self, script, fail_after=None):
        self.script = script
        self.fail_after = fail_after
        self.calls = []

    def generate(self, prompts, n, params):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise Preempted("preempted")
        self.calls.append((list(prompts), n, params))
        samples = {p: itertools.islice(itertools.cycle(self.script[p]), n) for p in prompts}
        return [[ev.Completion(text, num_tokens=tokens) for text, tokens in samples[p]] for p in prompts]

    @property
    def prompts_sent(self):
        return sum(len(prompts) for prompts, _, _ in self.calls)


def boxed(value, tokens=10):
    return (f"The answer is \\boxed{{{value}}}.", tokens)


def hand_tasks():
    """Two benchmarks whose scores are computed by hand in `test_scores_match_hand_computed_values`."""
    aime = ev.BenchmarkTask(
        "aime24",
        prompts=["What is 1+1?", "What is 1+2?", "What is 5+5?"],
        answers=["2", "3", "10"],
        n=4,
    )
    math500 = ev.BenchmarkTask("math500", prompts=["What is 3+4?", "What is 4+5?"], answers=["7", "9"], n=2)
    script = {
        "What is 1+1?": [boxed(2, 10)],  # 4 / 4 correct
        "What is 1+2?": [boxed(3, 20), boxed(4, 20), ("no idea", 40), boxed(5, 40)],  # 1 / 4
        "What is 5+5?": [boxed(11, 30)],  # 0 / 4
        "What is 3+4?": [boxed(7, 5), boxed(8, 15)],  # 1 / 2
        "What is 4+5?": [boxed(9, 8)],  # 2 / 2
    }
    return [aime, math500], script


PARAMS = ev.SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0)


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def brute_force_pass_at_k(n, c, k):
    """The fraction of k-subsets of n samples (c correct) that hold a correct one, by enumeration."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in subset) for subset in subsets), len(subsets))


def test_pass_at_k_hand_values_and_enumeration():
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert ev.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert ev.pass_at_k(5, 0, 3) == 0.0
    assert ev.pass_at_k(5, 5, 1) == 1.0
    assert ev.pass_at_k(4, 2, 3) == 1.0  # any 3 of 4 include a correct one
    assert ev.pass_at_k(32, 1, 32) == 1.0
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 1, 5)


def test_avg_at_n_and_pass_at_1_agree():
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    assert ev.avg_at_n(correct) == pytest.approx(100 * (0.25 + 1 + 0) / 3)
    scores = ev.benchmark_scores(correct, [[1, 2, 3, 4]] * 3, ks=[1, 2, 8])
    assert scores["pass@1"] == pytest.approx(scores["avg@4"])
    assert "pass@8" not in scores  # k > n is skipped
    assert scores["pass@2"] == pytest.approx(100 * (0.5 + 1 + 0) / 3)
    assert scores["mean_num_tokens"] == pytest.approx(2.5)


def test_scores_match_hand_computed_values(tmp_path):
    tasks, script = hand_tasks()
    generator = ScriptedGenerator(script)
    results = ev.run_evaluation(generator, tasks, PARAMS, pass_k=[1, 2, 4], output_dir=tmp_path, progress=False)

    aime = results["benchmarks"]["aime24"]
    assert aime["n"] == 4 and aime["num_problems"] == 3 and aime["num_samples"] == 12
    assert aime["avg@4"] == pytest.approx(100 * (4 / 4 + 1 / 4 + 0 / 4) / 3)  # 41.67
    assert aime["accuracy"] == aime["avg@4"]
    assert aime["pass@1"] == pytest.approx(aime["avg@4"])
    assert aime["pass@2"] == pytest.approx(100 * (1 + (1 - 3 / 6) + 0) / 3)  # 50.0
    assert aime["pass@4"] == pytest.approx(100 * 2 / 3)
    assert aime["mean_num_tokens"] == pytest.approx((4 * 10 + (20 + 20 + 40 + 40) + 4 * 30) / 12)

    math500 = results["benchmarks"]["math500"]
    assert math500["avg@2"] == pytest.approx(75.0)
    assert math500["pass@2"] == pytest.approx(100.0)
    assert "pass@4" not in math500
    assert math500["mean_num_tokens"] == pytest.approx((5 + 15 + 8 + 8) / 4)
    assert results["average"]["accuracy"] == pytest.approx((100 * 1.25 / 3 + 75.0) / 2)

    # One call per benchmark (batch_size 64 > problems), each with the benchmark's n.
    assert [(len(prompts), n) for prompts, n, _ in generator.calls] == [(3, 4), (2, 2)]

    # Every sample is in the JSONL with the documented fields.
    lines = [json.loads(line) for line in (tmp_path / ev.EVAL_SAMPLES_FILE).read_text().splitlines()]
    assert len(lines) == 12 + 4
    first = lines[0]
    assert set(first) == {
        "benchmark", "problem", "sample", "prompt", "completion", "extracted_answer", "gold", "correct",
        "num_tokens", "truncated",
    }
    assert (first["benchmark"], first["problem"], first["sample"], first["extracted_answer"], first["correct"]) == (
        "aime24", 0, 0, "2", True,
    )
    no_answer = next(r for r in lines if r["completion"] == "no idea")
    assert no_answer["extracted_answer"] is None and no_answer["correct"] is False
    saved = json.loads((tmp_path / ev.EVAL_RESULTS_FILE).read_text())
    assert saved["benchmarks"]["aime24"]["avg@4"] == pytest.approx(aime["avg@4"])
    assert (tmp_path / ev.EVAL_MARKDOWN_FILE).read_text() == ev.format_results_markdown(saved)


# ----------------------------------------------------------------------------------------------------------------
# Grading: one function for training and evaluation
# ----------------------------------------------------------------------------------------------------------------


def _grading_cases():
    spec = importlib.util.spec_from_file_location("_shared_grading_cases", TESTS / "test_rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GRADING_CASES


def test_evaluation_grading_agrees_with_training_reward_on_shared_cases():
    from stapo_trl.rewards import accuracy_reward, boxed_reward

    cases = _grading_cases()
    assert len(cases) >= 5
    # Through the whole harness: one problem per case, one sample, graded as evaluation grades.
    tasks = [ev.BenchmarkTask("math500", [f"case {i}" for i in range(len(cases))], [g for _, g, _ in cases], n=1)]
    script = {f"case {i}": [(completion, 1)] for i, (completion, _, _) in enumerate(cases)}
    out = ev.run_evaluation(ScriptedGenerator(script), tasks, PARAMS, progress=False)
    assert out["benchmarks"]["math500"]["accuracy"] == pytest.approx(100 * sum(e for *_, e in cases) / len(cases))
    completions = [c for c, _, _ in cases]
    golds = [g for _, g, _ in cases]
    training_accuracy = accuracy_reward(completions=completions, answer=golds)
    training_boxed = boxed_reward(completions=completions, answer=golds)
    for (completion, gold, expected), accuracy, reward in zip(cases, training_accuracy, training_boxed, strict=True):
        correct, _ = ev.grade_sample(completion, gold)
        assert correct == expected, (completion, gold)
        assert (accuracy > 0) == correct == (reward > 0), (completion, gold)


# ----------------------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------------------


def resume_tasks(n=2, first_prompt="q0"):
    prompts = [first_prompt] + [f"q{i}" for i in range(1, 5)]
    return [
        ev.BenchmarkTask("aime24", prompts, [str(i) for i in range(5)], n=n),
        ev.BenchmarkTask("amc23", ["r0", "r1", "r2"], ["0", "1", "2"], n=n),
    ]


RESUME_SCRIPT = {
    **{f"q{i}": [boxed(i, 3), boxed(i + 1, 4)] for i in range(5)},
    **{f"r{i}": [boxed(i, 5)] for i in range(3)},
    "changed": [boxed(0, 1)],
}
RESUME_SETTINGS = {"model": "m", "model_revision": "local", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64}


def test_resume_after_preemption_skips_completed_samples(tmp_path):
    reference = ev.run_evaluation(ScriptedGenerator(RESUME_SCRIPT), resume_tasks(), PARAMS, batch_size=2,
                                  output_dir=tmp_path / "reference", settings=RESUME_SETTINGS, progress=False)

    out = tmp_path / "run"
    # aime24 has 5 problems -> batches of 2, 2, 1; amc23 3 problems -> 2, 1. Preempted during the third call.
    crashing = ScriptedGenerator(RESUME_SCRIPT, fail_after=2)
    with pytest.raises(Preempted):
        ev.run_evaluation(crashing, resume_tasks(), PARAMS, batch_size=2, output_dir=out, settings=RESUME_SETTINGS,
                          progress=False)
    samples = out / ev.EVAL_SAMPLES_FILE
    assert len(samples.read_text().splitlines()) == 2 * 2 * 2  # two finished batches, flushed
    # A crash in the middle of a write leaves a partial line: it is dropped on resume.
    with open(samples, "a") as handle:
        handle.write('{"benchmark": "aime24", "problem": 4, "sam')

    resumed = ScriptedGenerator(RESUME_SCRIPT)
    results = ev.run_evaluation(resumed, resume_tasks(), PARAMS, batch_size=2, output_dir=out,
                                settings=RESUME_SETTINGS, progress=False)
    assert [prompts for prompts, _, _ in resumed.calls] == [["q4"], ["r0", "r1"], ["r2"]]
    assert resumed.prompts_sent == 4
    assert results["benchmarks"] == reference["benchmarks"]
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    keys = [(r["benchmark"], r["problem"], r["sample"]) for r in records]
    assert len(keys) == len(set(keys)) == (5 + 3) * 2

    # Everything done: a third run generates nothing and gives the same scores.
    idle = ScriptedGenerator(RESUME_SCRIPT)
    again = ev.run_evaluation(idle, resume_tasks(), PARAMS, batch_size=2, output_dir=out, settings=RESUME_SETTINGS,
                              progress=False)
    assert idle.calls == [] and again["benchmarks"] == reference["benchmarks"]

    # More samples per problem: only the missing sample indices are generated.
    more = ScriptedGenerator(RESUME_SCRIPT)
    ev.run_evaluation(more, resume_tasks(n=3), PARAMS, batch_size=8, output_dir=out, settings=RESUME_SETTINGS,
                      progress=False)
    assert [(len(prompts), n) for prompts, n, _ in more.calls] == [(5, 1), (3, 1)]


def test_resume_refuses_other_settings_or_prompts(tmp_path):
    ev.run_evaluation(ScriptedGenerator(RESUME_SCRIPT), resume_tasks(), PARAMS, output_dir=tmp_path,
                      settings=RESUME_SETTINGS, progress=False)
    generator = ScriptedGenerator(RESUME_SCRIPT)
    with pytest.raises(ev.ResumeError, match=r"temperature: stored 1.0, now 0.7"):
        ev.run_evaluation(generator, resume_tasks(), PARAMS, output_dir=tmp_path,
                          settings={**RESUME_SETTINGS, "temperature": 0.7}, progress=False)
    with pytest.raises(ev.ResumeError, match="prompt of aime24 problem 0"):
        ev.run_evaluation(generator, resume_tasks(first_prompt="changed"), PARAMS, output_dir=tmp_path,
                          settings=RESUME_SETTINGS, progress=False)
    assert generator.calls == []
    (tmp_path / ev.EVAL_SETTINGS_FILE).unlink()
    with pytest.raises(ev.ResumeError, match="settings of those samples are unknown"):
        ev.run_evaluation(generator, resume_tasks(), PARAMS, output_dir=tmp_path, settings=RESUME_SETTINGS,
                          progress=False)

    # A run that stopped before its first sample leaves only its settings: another run may take the directory.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ev.EVAL_SETTINGS_FILE).write_text(json.dumps({**RESUME_SETTINGS, "temperature": 0.7}))
    ev.run_evaluation(ScriptedGenerator(RESUME_SCRIPT), resume_tasks(), PARAMS, output_dir=fresh,
                      settings=RESUME_SETTINGS, progress=False)
    assert json.loads((fresh / ev.EVAL_SETTINGS_FILE).read_text()) == RESUME_SETTINGS


# ----------------------------------------------------------------------------------------------------------------
# Tables: --compare and the model card
# ----------------------------------------------------------------------------------------------------------------


def test_compare_prints_the_expected_table(tmp_path, capsys):
    run_a, run_b = EVAL_FIXTURES / "run_grpo.json", EVAL_FIXTURES / "run_stapo.json"
    output = tmp_path / "compare.md"
    assert main(["--compare", str(run_a), str(run_b), "--compare_output", str(output)]) == 0
    expected = (EVAL_FIXTURES / "compare_expected.md").read_text()
    assert capsys.readouterr().out == expected
    assert output.read_text() == expected
    # Directories holding eval_results.json work too, and labels replace the run names.
    run_dir = tmp_path / "stapo"
    run_dir.mkdir()
    shutil.copy(run_b, run_dir / ev.EVAL_RESULTS_FILE)
    assert main(["--compare", str(run_a), str(run_dir), "--labels", "A", "B"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| A ") and lines[3].startswith("| B ")


def test_compare_of_a_missing_file_fails_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--compare", str(tmp_path / "nope.json")])
    assert exit_info.value.code == 2
    assert "no evaluation results at" in capsys.readouterr().err


def test_stored_results_of_an_output_directory(tmp_path):
    assert ev.stored_results(tmp_path) == []
    shutil.copy(EVAL_FIXTURES / "run_stapo.json", tmp_path / ev.EVAL_RESULTS_FILE)
    # Runs of `stapo-eval --model <output_dir>` land in <output_dir>/eval/<decoding>/: all are collected.
    for name in ("justrl", "training"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        shutil.copy(EVAL_FIXTURES / "run_grpo.json", tmp_path / "eval" / name / ev.EVAL_RESULTS_FILE)
    (tmp_path / "eval" / "broken").mkdir()
    (tmp_path / "eval" / "broken" / ev.EVAL_RESULTS_FILE).write_text("not json")  # skipped with a warning
    stored = ev.stored_results(tmp_path)
    assert [path.relative_to(tmp_path).as_posix() for path, _ in stored] == [
        "eval_results.json", "eval/justrl/eval_results.json", "eval/training/eval_results.json"
    ]
    assert stored[0][1] == json.loads((EVAL_FIXTURES / "run_stapo.json").read_text())


# ----------------------------------------------------------------------------------------------------------------
# CLI: fail fast
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Make every loading step fail loudly: a flag error must be raised before any of them."""

    def forbidden(*args, **kwargs):
        raise AssertionError("loading started before the arguments were validated")

    monkeypatch.setattr(ev, "evaluate_model", forbidden)  # what the CLI calls
    for name in ("load_tasks", "build_generator", "resolve_model_revision"):  # what the run calls
        monkeypatch.setattr(pipeline, name, forbidden)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--benchmarks", "aime26"], ["--benchmarks", "'aime26'", "aime24, aime25, amc23, math500, minerva"]),
        (["--decoding", "greedy"], ["--decoding", "'greedy'", "training", "justrl"]),
        (["--n", "0"], ["--n", "positive integer"]),
        (["--n", "aime24=-3"], ["--n", "positive integer"]),
        (["--n", "aime26=3"], ["--n", "'aime26'", "aime24"]),
        (["--n", "many"], ["--n", "integer"]),
        (["--pass_k", "64"], ["--pass_k", "largest n = 32"]),
        (["--pass_k", "0"], ["--pass_k", "positive integer"]),
        (["--temperature", "-1"], ["--temperature", ">= 0"]),
        (["--top_p", "0"], ["--top_p", "(0, 1]"]),
        (["--max_new_tokens", "0"], ["--max_new_tokens", "positive"]),
        (["--batch_size", "0"], ["--batch_size", "positive"]),
        (["--max_problems", "0"], ["--max_problems", "positive"]),
        (["--benchmark_path", "aime26=x.jsonl"], ["'aime26'", "aime24"]),
        (["--benchmark_split", "aime24"], ["--benchmark_split", "NAME=VALUE"]),
        (["--backend", "tgi"], ["--backend", "'tgi'", "auto, vllm, transformers"]),
        (["--dtype", "int4"], ["--dtype", "bfloat16"]),
        (["--chat_template_kwargs", "{oops"], ["--chat_template_kwargs", "JSON"]),
        (["--data_parallel_size", "2", "--backend", "transformers"], ["--data_parallel_size", "vllm"]),
        (["--hub_model_id", "me/run"], ["push_to_hub is set but HF_HUB_OFFLINE=1"]),  # the card's repo: checked first
        (["--push_to_hub"], ["push_to_hub is set but HF_HUB_OFFLINE=1"]),  # a Hub --model is the card's repo
    ],
)
def test_cli_rejects_bad_flags_before_loading_anything(argv, expected, no_loading, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "org/some-model", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err, (fragment, err)


def test_cli_push_of_a_local_model_needs_the_hub_repository(no_loading, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path), "--push_to_hub"])
    assert exit_info.value.code == 2
    assert "--push_to_hub: --model is a local folder; name the Hub repository" in capsys.readouterr().err


def test_cli_requires_a_model(no_loading, capsys):
    with pytest.raises(SystemExit):
        main(["--benchmarks", "aime24"])
    assert "--model is required" in capsys.readouterr().err


@pytest.mark.skipif(ev.vllm_available(), reason="vLLM is installed")
def test_cli_vllm_backend_without_vllm_fails_fast(no_loading, capsys):
    with pytest.raises(SystemExit):
        main(["--model", "org/m", "--backend", "vllm"])
    assert "vLLM is not installed" in capsys.readouterr().err


def test_config_validation_as_a_library():
    with pytest.raises(ValueError, match="--decoding"):
        ev.EvalConfig(model="m", decoding="hot")
    config = ev.EvalConfig(model="m", decoding="justrl", n={"aime24": 2}, benchmarks=["all"])
    assert config.benchmarks == tuple(ALL_BENCHMARKS)
    assert config.sampling_params() == ev.SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=20480, seed=0)
    assert [config.samples_per_problem(b) for b in ALL_BENCHMARKS] == [2, 32, 32, 4, 4, 4]
    assert config.decoding_tag() == "justrl"
    assert ev.EvalConfig(model="m", temperature=0.6).decoding_tag() == "T0.6-top_p1"
    assert ev.EvalConfig(model="m", temperature=0.6).decoding_label() == "custom"
    assert ev.EvalConfig(model="m", max_new_tokens=4096).decoding_tag() == "training-max4096"
    assert ev.EvalConfig(model="m", benchmarks=["AIME24"]).benchmarks == ("aime24",)
    assert ev.EvalConfig(model="org/m").resolved_output_dir() == os.path.join("eval_runs", "org--m", "training")


def test_resume_mismatch_is_reported_before_the_model_is_loaded(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ev.EVAL_SETTINGS_FILE).write_text(json.dumps({**RESUME_SETTINGS, "model": "org/m", "temperature": 0.7}))
    sample = {"benchmark": "aime24", "problem": 0, "sample": 0, "prompt": "p", "gold": "1", "correct": False}
    (out / ev.EVAL_SAMPLES_FILE).write_text(json.dumps(sample) + "\n")
    monkeypatch.setattr(pipeline, "resolve_model_revision", lambda model, revision=None: "local")

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded before the resume check")

    monkeypatch.setattr(pipeline, "load_tasks", forbidden)
    monkeypatch.setattr(pipeline, "build_generator", forbidden)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "org/m", "--output_dir", str(out), "--backend", "transformers"])
    assert exit_info.value.code == 2
    assert "temperature: stored 0.7, now 1.0" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Model revision
# ----------------------------------------------------------------------------------------------------------------


def test_model_revision_is_local_or_the_hub_commit(tmp_path):
    assert ev.resolve_model_revision(str(tmp_path)) == "local"
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--tiny"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    assert ev.resolve_model_revision("org/tiny", cache_dir=str(tmp_path / "cache")) == sha
    assert ev.resolve_model_revision("org/absent", revision="v1", cache_dir=str(tmp_path / "cache")) == "v1"
    assert ev.resolve_model_revision("org/absent", revision=sha) == sha


# ----------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_tokenizer():
    return build_addition_tokenizer("abcdefghijklmnopqrstuvwxyz.,\n")


def test_format_prompt_plain_text_and_chat_template(char_tokenizer):
    messages = [{"role": "user", "content": "What is 1+1?"}]
    assert ev.format_prompt(messages) == "What is 1+1?"
    assert ev.format_prompt(messages, char_tokenizer) == "What is 1+1?"  # no chat template: the user content
    assert ev.format_prompt("raw text", char_tokenizer) == "raw text"
    templated = build_addition_tokenizer("<>usera")
    templated.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    assert ev.format_prompt(messages, templated) == "<user>What is 1+1?<a>"


def test_transformers_generator_samples_with_exactly_the_given_settings(char_tokenizer):
    model = tiny_model(char_tokenizer, max_position_embeddings=4096)
    model.train()
    # Filters in the model's generation config (e.g. Qwen3's top_k=20) must not leak into the protocol's sampling.
    model.generation_config.top_k = 1
    generator = ev.TransformersGenerator(model, char_tokenizer, max_batch_sequences=5)
    prompts = ["What is 1+1?", "What is 22+3?"]
    rng_before = torch.get_rng_state()
    params = ev.SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=6, seed=3)
    outputs = generator.generate(prompts, 4, params)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert model.training  # train mode restored
    assert [len(o) for o in outputs] == [4, 4]
    for completion in itertools.chain.from_iterable(outputs):
        assert 1 <= completion.num_tokens <= 6
        assert completion.truncated == (completion.num_tokens == 6 and "<eos>" not in completion.text)
    assert len({c.text for o in outputs for c in o}) > 1  # sampled, not top-1
    assert generator.generate(prompts, 4, params) == outputs  # seeded: reproducible
    greedy = generator.generate(prompts, 3, ev.SamplingParams(temperature=0.0, max_new_tokens=6))
    assert all(len({c.text for c in o}) == 1 for o in greedy)


class FakeVLLM:
    """A stand-in `vllm` module recording what the backend asks for."""

    def __init__(self, tokenizer):
        module = types.ModuleType("vllm")
        record = self.record = {}

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                record["llm"] = kwargs

            def get_tokenizer(self):
                return tokenizer

            def generate(self, inputs, sampling, use_tqdm=True):
                record["inputs"], record["sampling"] = inputs, sampling
                outputs = []
                for i, params in enumerate(sampling):
                    samples = [
                        types.SimpleNamespace(text=f"\\boxed{{{i}}}", token_ids=[1] * (j + 2),
                                              finish_reason="length" if j == 0 else "stop")
                        for j in range(params.kwargs["n"])
                    ]
                    outputs.append(types.SimpleNamespace(outputs=samples))
                return outputs

        module.LLM, module.SamplingParams = LLM, SamplingParams
        self.module = module


def test_vllm_generator_around_a_stand_in_vllm(char_tokenizer, monkeypatch):
    fake = FakeVLLM(char_tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    generator = ev.VLLMGenerator("org/m", revision="abc", tensor_parallel_size=2, max_model_len=4096, seed=1)
    assert fake.record["llm"]["tensor_parallel_size"] == 2
    assert fake.record["llm"]["revision"] == "abc" and fake.record["llm"]["max_model_len"] == 4096
    outputs = generator.generate(["What is 1+1?", "What is 2+2?"], 3, ev.SamplingParams(0.7, 0.9, 128, seed=10))
    assert fake.record["inputs"][0] == {"prompt_token_ids": char_tokenizer("What is 1+1?")["input_ids"]}
    assert [s.kwargs for s in fake.record["sampling"]] == [
        {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 128, "seed": 10},
        {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 128, "seed": 11},
    ]
    assert outputs[1] == [
        ev.Completion("\\boxed{1}", 2, True),
        ev.Completion("\\boxed{1}", 3, False),
        ev.Completion("\\boxed{1}", 4, False),
    ]


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_data_parallel_generator_splits_and_reassembles(monkeypatch, start_method):
    # Spawned workers import the generator's module by name (sys.path is passed on). Spawn (the default, needed
    # with CUDA) costs each worker the import of the package; fork checks the same logic in a fraction of a second.
    monkeypatch.syspath_prepend(str(EVAL_FIXTURES))
    from echo_generator import EchoGenerator

    factory = functools.partial(EchoGenerator, "dp")
    devices = ["0", "1", "2", "3"]
    with ev.DataParallelGenerator(
        factory, 2, devices_per_worker=2, devices=devices, start_method=start_method
    ) as generator:
        prompts = [f"p{i}" for i in range(5)]
        outputs = generator.generate(prompts, 2, ev.SamplingParams(seed=100))
        # Shards [p0, p1, p2] -> GPUs 0,1 and [p3, p4] -> GPUs 2,3; per-prompt seeds as if in one process.
        assert [o[0].text for o in outputs] == [
            "dp|p0|100|0,1", "dp|p1|101|0,1", "dp|p2|102|0,1", "dp|p3|103|2,3", "dp|p4|104|2,3",
        ]
        assert [c.num_tokens for c in outputs[4]] == [0, 1]
        with pytest.raises(RuntimeError, match="boom"):
            generator.generate(["a", "b", "boom"], 1, ev.SamplingParams(seed=0))
        assert len(generator.generate(["x"], 1, ev.SamplingParams(seed=0))) == 1  # still usable after an error
    with pytest.raises(ValueError, match="needs 4 GPUs, 2 visible"):
        ev.DataParallelGenerator(factory, 2, devices_per_worker=2, devices=["0", "1"])


# ----------------------------------------------------------------------------------------------------------------
# End to end: the CLI on a tiny model and the fixture benchmarks
# ----------------------------------------------------------------------------------------------------------------


def fixture_paths():
    return [f"{name}={DATASETS / (name + '.jsonl')}" for name in ALL_BENCHMARKS]


def test_cli_end_to_end_with_the_transformers_backend(fixture_model_dir, tmp_path, capsys, monkeypatch):
    from stapo_trl.data import PROMPT_SUFFIX

    out = tmp_path / "out"
    argv = [
        "--model", str(fixture_model_dir), "--backend", "transformers", "--output_dir", str(out),
        "--benchmark_path", *fixture_paths(), "--n", "2", "aime24=3", "--max_new_tokens", "8",
        "--max_problems", "2", "--no_progress", "--run_name", "tiny",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / ev.EVAL_RESULTS_FILE).read_text())
    assert printed == (out / ev.EVAL_MARKDOWN_FILE).read_text() == ev.format_results_markdown(results)
    assert results["run_name"] == "tiny"
    assert results["model"] == str(fixture_model_dir) and results["model_revision"] == "local"
    assert results["settings"]["decoding"] == "training"
    assert (results["settings"]["temperature"], results["settings"]["top_p"]) == (1.0, 1.0)
    assert results["settings"]["max_new_tokens"] == 8 and results["settings"]["backend"] == "transformers"
    assert list(results["benchmarks"]) == ALL_BENCHMARKS
    for name, scores in results["benchmarks"].items():
        n = 3 if name == "aime24" else 2
        assert scores["n"] == n and scores["num_problems"] == 2 and f"avg@{n}" in scores
        assert set(scores) >= {"pass@1", f"pass@{n}", "mean_num_tokens", "dataset", "total_problems"}
        assert 0 < scores["mean_num_tokens"] <= 8
    samples = [json.loads(line) for line in (out / ev.EVAL_SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 2 * 3 + 5 * 2 * 2
    assert PROMPT_SUFFIX in samples[0]["prompt"]  # the training prompt, rendered as plain text (no chat template)

    # Re-running the finished run loads no model and generates nothing: it rebuilds the results from the samples.
    def no_model(*args, **kwargs):
        raise AssertionError("the model should not be needed: every sample is done")

    monkeypatch.setattr(pipeline, "build_generator", no_model)
    calls = []
    original = ev.run_evaluation

    def counting_run(generator, *args, **kwargs):
        class Counting:
            format_prompt = getattr(generator, "format_prompt", None)

            def generate(self, prompts, n, params):
                calls.append(len(prompts))
                return generator.generate(prompts, n, params)

        return original(Counting(), *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_evaluation", counting_run)
    assert main(argv) == 0
    assert calls == []
    assert json.loads((out / ev.EVAL_RESULTS_FILE).read_text())["benchmarks"] == results["benchmarks"]


# ----------------------------------------------------------------------------------------------------------------
# During training
# ----------------------------------------------------------------------------------------------------------------


def test_training_callback_logs_benchmark_accuracy(tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from conftest import build_trainer

    from stapo_trl.eval_callback import BenchmarkEvalCallback

    trainer = build_trainer(GRPOTrainer, GRPOConfig, tmp_path, max_steps=2)
    callback = BenchmarkEvalCallback(
        trainer,
        benchmarks=["aime24", "math500"],
        dataset_overrides={name: {"path": str(DATASETS / f"{name}.jsonl")} for name in ("aime24", "math500")},
        eval_steps=2,
        n=2,
        max_new_tokens=4,
        max_problems=3,
        eval_on_start=True,
    )
    trainer.add_callback(callback)
    trainer.train()
    assert trainer.model.training
    history = trainer.state.log_history
    eval_logs = [entry for entry in history if "eval/aime24/avg@2" in entry]
    assert [entry["step"] for entry in eval_logs] == [0, 2]
    for entry in eval_logs:
        assert 0.0 <= entry["eval/aime24/avg@2"] <= 100.0 and 0.0 <= entry["eval/math500/avg@2"] <= 100.0
        assert 0 < entry["eval/math500/mean_num_tokens"] <= 4
        assert "reward" not in entry  # GRPO's training metrics are not flushed into the evaluation's log
    train_logs = [entry for entry in history if "reward" in entry]
    assert [entry["step"] for entry in train_logs] == [1, 2]  # logging_steps=1: one training log per step

    # The last results are kept for the model card, which lists them in its model-index metadata.
    from stapo_trl import hub

    last = json.loads((tmp_path / "eval" / "during-training" / ev.EVAL_RESULTS_FILE).read_text())
    assert last["evaluated_at_step"] == 2
    entries = hub.eval_results_in(tmp_path)
    assert [(entry.dataset_name, entry.metric_type, entry.metric_value) for entry in entries] == [
        ("AIME24 (local copy)", "avg@2", round(eval_logs[-1]["eval/aime24/avg@2"], 2)),
        ("MATH500 (local copy)", "avg@2", round(eval_logs[-1]["eval/math500/avg@2"], 2)),
    ]
    assert entries[0].metric_config == "in-training, temperature 1.0, top-p 1.0"
    assert entries[0].metric_args == {
        "n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 4, "problems": 3, "training_step": 2
    }


def test_training_callback_validates_its_arguments(tmp_path):
    from stapo_trl.eval_callback import BenchmarkEvalCallback

    trainer = types.SimpleNamespace(args=types.SimpleNamespace())
    with pytest.raises(ValueError, match="eval_steps"):
        BenchmarkEvalCallback(trainer, eval_steps=0, tasks=[])
    with pytest.raises(ValueError, match="unknown"):
        BenchmarkEvalCallback(trainer, benchmarks=["gsm8k"])


def test_training_callback_on_two_processes(tmp_path):
    """Each rank generates its shard of the problems; the reduced metrics are the global ones, on every rank."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        str(EVAL_FIXTURES / "ddp_callback_check.py"), str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    # Problem i goes to rank i % 2; evaluated at step 0 (eval_on_start) and step 1.
    assert ranks[0]["seen"] == [0, 2, 4, 6] * 2 and ranks[1]["seen"] == [1, 3, 5] * 2
    # By hand: correct samples per problem min(i % 3, 2) of 2 -> 0, .5, 1, 0, .5, 1, 0 -> 3 / 7;
    # tokens (i + 1) + (i + 2) summed over i < 7 = 63 over 14 samples.
    expected = {"eval/aime24/avg@2": 100 * 3 / 7, "eval/aime24/mean_num_tokens": 63 / 14}
    for rank in ranks:
        assert [log["step"] for log in rank["logs"]] == [0, 1]
        for log in rank["logs"]:
            assert log.keys() - {"step"} == expected.keys()
            for key, value in expected.items():
                assert log[key] == pytest.approx(value)
