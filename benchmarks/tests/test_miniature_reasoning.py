"""Fast checks of the miniature reasoning task and its study script (`benchmarks/miniature_reasoning.py`)."""

import json
import random
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BENCHMARKS))

import reasoning_task as task  # noqa: E402


def test_reward_depends_only_on_the_boxed_answer():
    rng = random.Random(0)
    problem = task.make_problem(12, 7, 5, rng)
    assert problem["answer"] == "14"
    chains = {task.reasoning_chain(problem, rng) for _ in range(50)}
    assert len(chains) > 20  # the wording varies
    assert task.boxed_reward(sorted(chains), ["14"] * len(chains)) == [1.0] * len(chains)
    wrong = [chain.replace("\\boxed{14}", "\\boxed{15}") for chain in sorted(chains)]
    assert task.boxed_reward(wrong, ["14"] * len(wrong)) == [-1.0] * len(wrong)
    # any text around the box, even nonsense or a wrong intermediate step, leaves the reward unchanged
    odd = ["stickers Zoe = 3 wooden \\boxed{14}", "12 + 7 = 20. \\boxed{14}", "\\boxed{14}"]
    assert task.boxed_reward(odd + ["no box 14", "\\boxed{14} then \\boxed{13}"], ["14"] * 5) == [1, 1, 1, -1, -1]


def test_splits_are_disjoint():
    train, held_out = task.split_problems(seed=1, num_train=500, num_eval=100)
    triples = lambda problems: {(p["a"], p["b"], p["c"]) for p in problems}  # noqa: E731
    assert len(triples(train)) == 500 and len(triples(held_out)) == 100
    assert not triples(train) & triples(held_out)
    assert all(int(p["answer"]) == p["a"] + p["b"] - p["c"] >= 1 for p in train + held_out)


def test_tokenizer_has_a_long_tail():
    corpus = task.task_corpus(seed=0, num_problems=1500)
    tokenizer = task.build_reasoning_tokenizer(corpus)
    assert 1000 <= len(tokenizer) <= 4096
    used = {token for text in corpus for token in tokenizer(text)["input_ids"]}
    # most of the vocabulary never occurs in the task's own text: the long tail a confident position leaves at p ~ 0
    assert len(used) < 0.6 * len(tokenizer)
    chain = task.reasoning_chain(task.make_problem(3, 4, 2, random.Random(0)), random.Random(1))
    ids = tokenizer(" " + chain)["input_ids"]
    assert 20 <= len(ids) <= task.MAX_COMPLETION_LENGTH
    assert tokenizer.convert_tokens_to_ids(task.BOXED_TOKEN) in ids
    assert tokenizer.decode(ids) == " " + chain


def test_two_update_run_writes_every_curve(tmp_path):
    import miniature_reasoning as study

    runs = tmp_path / "runs"
    common = ["--runs-dir", str(runs), "--seeds", "0", "--methods", "stapo", "--ablations", "--steps", "2",
              "--results-name", "test_study", "--results-dir", str(tmp_path)]
    study.WARM_START.update(max_steps=2, eval_every=1)  # an untrained warm start is enough for the bookkeeping
    study.run_warm_worker(study.parse_args(common), 0)
    study.run_worker(study.parse_args(common), 0, "stapo")
    study.main(common + ["--plot-only"])
    result = json.loads((tmp_path / "test_study.json").read_text())
    curves = result["curves"]["stapo/seed0"]
    for key in ("stapo/entropy_p50", "entropy", "stapo/masked_frac", "stapo/candidate_frac", "grad_norm", "reward",
                "heldout_greedy_accuracy"):
        assert curves[key], key
    assert sorted(curves["grad_norm"]) == ["1", "2"]
    assert result["summary"]["stapo"]["seeds"] == [0]
    assert result["rl_settings"]["spurious_prob_threshold"] == 0.002
    assert result["rl_settings"]["steps_per_generation"] > result["rl_settings"]["gradient_accumulation_steps"]
    assert (tmp_path / "test_study.png").stat().st_size > 0
