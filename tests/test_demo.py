"""Fast tests of the CPU demo's building blocks (task, tokenizer, warm start, accuracy, metrics, plots)."""

import csv
import json
import re
from types import SimpleNamespace

import pytest
import torch

from stapo_trl import demo
from stapo_trl.plots import (
    load_metrics,
    metric_filename,
    metric_series,
    plot_each_metric,
    plot_runs,
    plot_training_curves,
    smooth_values,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny: one intra-op thread is as fast, and far faster on a machine busy with other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return demo.build_demo_tokenizer()


# ---------------------------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------------------------


def _operands(question):
    match = re.fullmatch(r"What is (\d+)\+(\d+)\?", question)
    assert match, question
    return int(match.group(1)), int(match.group(2))


def test_arithmetic_problems_are_correct_distinct_and_seeded():
    problems = demo.arithmetic_problems(300, seed=3, max_operand=99)
    assert len(problems) == 300
    assert len({p["question"] for p in problems}) == 300
    for problem in problems:
        a, b = _operands(problem["question"])
        assert 0 <= a <= 99 and 0 <= b <= 99
        assert problem["answer"] == str(a + b)
    assert problems == demo.arithmetic_problems(300, seed=3)
    assert problems != demo.arithmetic_problems(300, seed=4)
    small = demo.arithmetic_problems(16, seed=0, max_operand=3)
    assert {_operands(p["question"]) for p in small} == {(a, b) for a in range(4) for b in range(4)}
    with pytest.raises(ValueError):
        demo.arithmetic_problems(17, seed=0, max_operand=3)


def test_splits_are_disjoint_even_up_to_operand_order():
    train_ds, eval_ds = demo.make_demo_datasets(seed=1, num_eval=200)
    assert train_ds.column_names == ["prompt", "answer"] == eval_ds.column_names
    assert len(eval_ds) == 200
    held_out = {frozenset(_operands(q)) for q in eval_ds["prompt"]}
    train_pairs = [frozenset(_operands(q)) for q in train_ds["prompt"]]
    assert not held_out.intersection(train_pairs)
    # Every pair not held out (in either order) is used for training, and the prompt is a plain string.
    assert len(train_ds) + sum(1 for a in range(100) for b in range(100) if frozenset((a, b)) in held_out) == 100 * 100
    assert isinstance(train_ds[0]["prompt"], str)
    for row in eval_ds.select(range(20)):
        a, b = _operands(row["prompt"])
        assert row["answer"] == str(a + b)
    limited, _ = demo.make_demo_datasets(seed=1, num_train=100, num_eval=200)
    assert limited["prompt"] == train_ds["prompt"][:100]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_the_task_text(tokenizer):
    unk = tokenizer.unk_token_id
    for problem in demo.arithmetic_problems(200, seed=0):
        text = problem["question"] + demo.format_completion(problem["answer"])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert unk not in ids
        assert tokenizer.decode(ids) == text
    completion = tokenizer.tokenize(demo.format_completion(198))
    assert completion == ["\\boxed{", "1", "9", "8", "}"]  # with <eos>: 6 tokens <= MAX_COMPLETION_LENGTH
    assert len(completion) + 1 <= demo.MAX_COMPLETION_LENGTH
    assert tokenizer.padding_side == "left"


def test_demo_model_has_the_documented_size(tokenizer):
    model = demo.build_demo_model(tokenizer, seed=0)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (128, 4, 512)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    other = demo.build_demo_model(tokenizer, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), other.parameters()))


# ---------------------------------------------------------------------------------------------------------------
# Warm start and accuracy
# ---------------------------------------------------------------------------------------------------------------


def test_warm_start_reduces_the_loss(tokenizer):
    train_ds, _ = demo.make_demo_datasets(seed=0, num_train=64, num_eval=50)
    model = demo.build_demo_model(tokenizer, seed=0)
    info = demo.warm_start(model, tokenizer, train_ds, None, max_steps=12, batch_size=32, progress=False)
    assert info["steps"] == 12
    assert info["accuracy"] is None and not info["reached_target"]
    assert info["loss"] < 0.7 * info["first_loss"]
    assert info["seconds"] > 0


def test_warm_start_stops_when_the_target_is_reached(tokenizer):
    train_ds, eval_ds = demo.make_demo_datasets(seed=0, num_train=64, num_eval=50)
    model = demo.build_demo_model(tokenizer, seed=0)
    info = demo.warm_start(
        model, tokenizer, train_ds, eval_ds, target_accuracy=0.0, max_steps=50, eval_every=3, progress=False
    )
    assert info["steps"] == 3 and info["reached_target"]
    assert 0.0 <= info["accuracy"] <= 1.0


@pytest.mark.parametrize(("target", "message"), [(0.0, "Warm start reached its target"), (1.0, "below its target")])
def test_warm_start_says_whether_it_reached_its_target(tokenizer, capsys, target, message):
    train_ds, eval_ds = demo.make_demo_datasets(seed=0, num_train=64, num_eval=20)
    model = demo.build_demo_model(tokenizer, seed=0)
    info = demo.warm_start(model, tokenizer, train_ds, eval_ds, target_accuracy=target, max_steps=3, eval_every=3)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warm start")]
    assert len(lines) == 1 and message in lines[0]
    if info["reached_target"]:
        assert f"after {info['steps']} steps" in lines[0] and f"{info['accuracy']:.1%}" in lines[0]


def test_supervised_targets_cover_the_completion_only(tokenizer):
    train_ds, _ = demo.make_demo_datasets(seed=0, num_train=8, num_eval=10)
    input_ids, attention_mask, labels = demo._supervised_tensors(tokenizer, train_ds)
    for row in range(len(train_ds)):
        target = labels[row][labels[row] != -100].tolist()
        assert tokenizer.decode(target) == demo.format_completion(train_ds[row]["answer"]) + tokenizer.eos_token
        kept = input_ids[row][attention_mask[row].bool()].tolist()
        assert tokenizer.decode(kept, skip_special_tokens=True) == train_ds[row]["prompt"] + demo.format_completion(
            train_ds[row]["answer"]
        )
        assert attention_mask[row][0] == 0 or attention_mask[row].all()  # left padding


class ScriptedModel(torch.nn.Module):
    """Answers `a+b` (or `a+b+1` when `wrong(a, b)`) with `\\boxed{...}<eos>`, through the `generate` API."""

    def __init__(self, tokenizer, wrong=lambda a, b: False, junk=""):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.wrong, self.junk = tokenizer, wrong, junk
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kwargs):
        self.calls.append(kwargs)
        assert (attention_mask[:, -1] == 1).all(), "prompts must be left-padded"
        rows = []
        for ids in input_ids:
            a, b = _operands(self.tokenizer.decode(ids, skip_special_tokens=True))
            answer = a + b + int(self.wrong(a, b))
            ids = self.tokenizer(demo.format_completion(answer) + self.junk, add_special_tokens=False)["input_ids"]
            rows.append((ids + [eos_token_id])[:max_new_tokens])
        width = max(len(r) for r in rows)
        completions = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, completions], dim=1)


def test_greedy_accuracy_counts_right_and_wrong_answers(tokenizer):
    _, eval_ds = demo.make_demo_datasets(seed=0, num_eval=60)
    assert demo.greedy_accuracy(ScriptedModel(tokenizer), tokenizer, eval_ds, batch_size=16) == 1.0
    always_wrong = ScriptedModel(tokenizer, wrong=lambda a, b: True)
    assert demo.greedy_accuracy(always_wrong, tokenizer, eval_ds) == 0.0
    odd_wrong = ScriptedModel(tokenizer, wrong=lambda a, b: a % 2 == 1)
    expected = sum(_operands(q)[0] % 2 == 0 for q in eval_ds["prompt"]) / 60
    assert demo.greedy_accuracy(odd_wrong, tokenizer, eval_ds, batch_size=7) == pytest.approx(expected)
    assert demo.greedy_accuracy(odd_wrong, tokenizer, eval_ds, limit=10) == pytest.approx(
        sum(_operands(q)[0] % 2 == 0 for q in eval_ds["prompt"][:10]) / 10
    )
    assert odd_wrong.calls[0]["do_sample"] is False
    # Text after the box does not change the answer (the reward's extractor takes the last closed box).
    assert demo.greedy_accuracy(ScriptedModel(tokenizer, junk="t"), tokenizer, eval_ds) == 1.0
    assert tokenizer.padding_side == "left"


def test_sampled_accuracy_samples(tokenizer):
    _, eval_ds = demo.make_demo_datasets(seed=0, num_eval=20)
    model = ScriptedModel(tokenizer)
    assert demo.sampled_accuracy(model, tokenizer, eval_ds, temperature=1.0) == 1.0
    assert model.calls[0]["do_sample"] is True and model.calls[0]["temperature"] == 1.0


def test_accuracy_of_a_real_tiny_model_is_a_fraction(tokenizer):
    _, eval_ds = demo.make_demo_datasets(seed=0, num_eval=40)
    model = demo.build_demo_model(tokenizer, seed=0)
    model.train()
    accuracy = demo.greedy_accuracy(model, tokenizer, eval_ds, batch_size=16)
    assert 0.0 <= accuracy <= 1.0
    assert model.training  # the mode is restored


# ---------------------------------------------------------------------------------------------------------------
# Settings and the entry point
# ---------------------------------------------------------------------------------------------------------------


def test_demo_settings_make_a_valid_stapo_config(tmp_path):
    from stapo_trl.config import STAPOConfig

    settings = demo.demo_settings(output_dir=str(tmp_path))
    config = STAPOConfig(**settings)
    assert config.use_cpu and not config.bf16
    assert config.loss_type == "dapo" and config.beta == 0.0
    assert config.num_generations == 8
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 16 * 8
    assert config.max_completion_length == demo.MAX_COMPLETION_LENGTH
    assert config.logging_steps == 1 and config.report_to == []
    assert demo.demo_settings(max_steps=3)["max_steps"] == 3
    with pytest.raises(TypeError):
        demo.demo_settings(not_a_field=1)


def test_demo_config_raises_no_warning(tmp_path):
    import warnings

    from stapo_trl.config import STAPOConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = STAPOConfig(**demo.demo_settings(output_dir=str(tmp_path)))
    assert [str(warning.message) for warning in caught] == []
    assert config.activation_checkpointing is False


@pytest.mark.parametrize(("cores", "load", "threads"), [(2, 0.3, 2), (2, 1.4, 1), (2, 6.0, 1), (8, 2.6, 5), (8, 0.0, 8)])
def test_demo_uses_the_cores_the_load_leaves_idle(cores, load, threads, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert demo.demo_num_threads(cores=cores, load=load) == threads


def test_demo_keeps_the_thread_count_the_user_set(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert demo.demo_num_threads(cores=2, load=9.0) == torch.get_num_threads()


def test_prepare_demo_returns_everything_train_py_needs(tmp_path):
    model, tokenizer, train_ds, eval_ds, info = demo.prepare_demo(
        tmp_path, seed=0, num_eval=40, warm_start_max_steps=4, target_accuracy=0.99, progress=False
    )
    assert len(eval_ds) == 40 and len(train_ds) > 9000
    assert info["warm_start"]["steps"] == 4
    assert set(info["accuracy_before_rl"]) == {"greedy", "sampled"}
    assert json.loads((tmp_path / "warm_start.json").read_text())["warm_start"]["steps"] == 4
    assert model.config.vocab_size == len(tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Metrics and plots
# ---------------------------------------------------------------------------------------------------------------


def _logs():
    return [
        {"loss": 0.1, "reward": 0.25, "entropy": 0.5, "stapo/masked_frac": 0.0, "learning_rate": 1e-4},
        {"loss": 0.2, "reward": 0.5, "entropy": 0.4, "stapo/masked_frac": 0.002, "stapo/entropy_threshold": 0.3},
        {"train_runtime": 12.5, "train_loss": 0.15},
    ]


def test_metrics_callback_writes_jsonl_and_csv(tmp_path):
    callback = demo.DemoMetricsCallback(tmp_path / "run")
    args = SimpleNamespace(output_dir=str(tmp_path / "ignored"))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"stale": 1}\n')
    callback.on_train_begin(args, state, None)
    for step, logs in enumerate(_logs(), start=1):
        state.global_step, state.epoch = step, step / 10
        callback.on_log(args, state, None, logs=dict(logs, nan_value=float("nan")))
    callback.on_train_end(args, state, None)

    records = demo.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["stapo/masked_frac"] == 0.002 and records[1]["epoch"] == 0.2
    assert records[0]["nan_value"] is None
    assert "stale" not in records[0]
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    assert rows[0]["reward"] == "0.25" and rows[0]["stapo/entropy_threshold"] == ""
    assert rows[2]["train_runtime"] == "12.5"
    assert not (tmp_path / "ignored").exists()


def test_metrics_callback_defaults_to_the_trainer_output_dir_and_main_process(tmp_path):
    callback = demo.DemoMetricsCallback()
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(is_world_process_zero=False, global_step=1, epoch=0.1)
    callback.on_train_begin(args, state, None)
    callback.on_log(args, state, None, logs={"reward": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists()
    state.is_world_process_zero = True
    callback.on_train_begin(args, state, None)
    callback.on_log(args, state, None, logs={"reward": torch.tensor(1.0)})
    callback.on_train_end(args, state, None)
    assert demo.read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "epoch": 0.1, "reward": 1.0}]
    assert (tmp_path / "metrics.csv").exists()


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_plot_training_curves_from_records_and_from_a_file(tmp_path):
    records = [dict(r, step=i) for i, r in enumerate(_logs(), start=1)]
    plot_training_curves(records, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png")
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_metrics(path) == records
    plot_training_curves(path, tmp_path / "nested" / "curves.png", keys=["reward", "not/logged"], smooth=2)
    _assert_png(tmp_path / "nested" / "curves.png")


def test_plot_runs_compares_runs_on_shared_axes(tmp_path):
    stapo = [{"step": s, "reward": s / 10, "entropy": 1.0, "stapo/masked_frac": 1e-4} for s in range(1, 30)]
    grpo = [{"step": s, "reward": s / 20, "entropy": 1.0 - s / 40} for s in range(1, 30)]
    figure = plot_runs({"STAPO": stapo, "GRPO": grpo}, output_path=tmp_path / "compare.png", smooth=5, title="t")
    _assert_png(tmp_path / "compare.png")
    reward_axis = figure.axes[0]
    assert [line.get_label() for line in reward_axis.get_lines() if not line.get_label().startswith("_")] == [
        "STAPO",
        "GRPO",
    ]
    figure = plot_runs({"STAPO": stapo}, keys=None)  # every numeric key
    assert len([axis for axis in figure.axes if axis.get_visible()]) == 3
    with pytest.raises(ValueError):
        plot_runs({"empty": []}, keys=None)


def test_metric_series_and_smoothing():
    records = [{"step": 2, "reward": 1.0}, {"step": 4}, {"step": 6, "reward": "nan"}, {"reward": 3.0}]
    assert metric_series(records, "reward") == ([2.0, 3.0], [1.0, 3.0])
    assert smooth_values([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth_values([1.0, 2.0], 0) == [1.0, 2.0]


def test_plot_each_metric_writes_one_png_per_key(tmp_path):
    records = [{"step": s, "reward": s / 10, "entropy": 1.0, "stapo/masked_frac": 0.0} for s in range(1, 6)]
    paths = plot_each_metric(records, tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["reward.png", "entropy.png", "stapo_masked_frac.png"]
    for path in paths:
        _assert_png(tmp_path / path.rsplit("/", 1)[-1])
    assert metric_filename("rewards/accuracy_reward/mean") == "rewards_accuracy_reward_mean"


def test_demo_settings_drive_a_real_stapo_run_with_metrics_progress_and_plots(tmp_path, tokenizer, capsys):
    """Two RL steps of the demo with STAPOTrainer: the callbacks record TRL's and STAPO's metrics per step."""
    from stapo_trl.config import STAPOConfig
    from stapo_trl.rewards import accuracy_reward
    from stapo_trl.trainer import STAPOTrainer

    train_ds, _ = demo.make_demo_datasets(seed=0, num_train=32, num_eval=10)
    model = demo.build_demo_model(tokenizer, seed=0)
    args = STAPOConfig(
        **demo.demo_settings(
            output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=16, spurious_prob_threshold=0.5
        )
    )
    metrics = demo.DemoMetricsCallback()
    trainer = STAPOTrainer(
        model=model,
        args=args,
        reward_funcs=accuracy_reward,
        train_dataset=train_ds,
        processing_class=tokenizer,
        callbacks=[metrics],
    )
    demo.use_demo_progress_bar(trainer)
    trainer.train()

    records = demo.read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("reward", "entropy", "stapo/masked_frac", "stapo/candidate_frac", "completions/mean_length"):
        assert all(isinstance(r[key], float) for r in steps), key
    assert (tmp_path / "metrics.csv").read_text().startswith("step,epoch,")
    captured = capsys.readouterr()
    assert "'loss'" not in captured.out  # the log dicts are not printed
    bar = captured.err.replace("\r", "\n").splitlines()
    assert any(line.startswith("RL: 100%") and "2/2" in line and "silenced=" in line for line in bar), bar[-3:]
    paths = plot_each_metric(tmp_path / "metrics.jsonl", tmp_path)
    plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "training_curves.png")
    for path in [*paths, str(tmp_path / "training_curves.png")]:
        _assert_png(tmp_path / path.rsplit("/", 1)[-1])


def test_finish_demo_writes_the_summary_and_plots(tmp_path, tokenizer):
    _, eval_ds = demo.make_demo_datasets(seed=0, num_eval=30)
    records = [{"step": s, "reward": s / 10, "entropy": 0.4, "stapo/masked_frac": 0.0} for s in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    info = {"accuracy_before_rl": {"greedy": 0.25, "sampled": 0.125}, "warm_start": {"steps": 3}}
    summary = demo.finish_demo(ScriptedModel(tokenizer), tokenizer, eval_ds, info, tmp_path, extra={"seconds": 1.5})
    assert summary["accuracy_after_rl"] == {"greedy": 1.0, "sampled": 1.0}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["accuracy_before_rl"]["greedy"] == 0.25 and saved["seconds"] == 1.5
    for name in ("accuracy_before_after.png", "training_curves.png", "training_details.png", "reward.png",
                 "entropy.png", "stapo_masked_frac.png"):  # fmt: skip
        _assert_png(tmp_path / name)
    line = demo.format_demo_summary(summary)
    assert "25.0% -> 100.0%" in line and "12.5% -> 100.0%" in line and "30 problems" in line
    (tmp_path / "metrics.jsonl").unlink()
    # without metrics only the before/after figure is drawn
    plots = demo.finish_demo(ScriptedModel(tokenizer), tokenizer, eval_ds, info, tmp_path / "new")["plots"]
    assert plots == [str(tmp_path / "new" / "accuracy_before_after.png")]


def test_accuracy_figure_draws_the_before_and_after_values(tmp_path):
    from stapo_trl.plots import plot_accuracy_before_after

    before, after = {"greedy": 0.278, "sampled": 0.182}, {"greedy": 0.714, "sampled": 0.488}
    figure = plot_accuracy_before_after(before, after, tmp_path / "accuracy.png")
    axis = figure.axes[0]
    assert [round(bar.get_height(), 6) for bar in axis.patches] == [27.8, 18.2, 71.4, 48.8]
    assert [text.get_text() for text in axis.texts] == ["27.8%", "18.2%", "71.4%", "48.8%"]
    assert [tick.get_text() for tick in axis.get_xticklabels()] == ["greedy", "sampled"]
    _assert_png(tmp_path / "accuracy.png")
    with pytest.raises(ValueError, match="No decoding in both"):
        plot_accuracy_before_after({"greedy": 0.1}, {"sampled": 0.2})
