"""STAPOTrainer.train() on the tiny model: it learns, logs the STAPO metrics, checkpoints and resumes."""

import json

import torch
from conftest import build_trainer, digit_count_reward, tiny_model, tiny_tokenizer

from stapo_trl import STAPOConfig, STAPOTrainer

SETTINGS = dict(
    reward_funcs=digit_count_reward,
    learning_rate=1e-3,
    spurious_prob_threshold=0.05,  # a random 25-token model puts ~0.04 on every token: make S2T act
    save_strategy="steps",
    save_steps=2,
)


def test_train_checkpoint_and_resume(tmp_path):
    model = tiny_model(tiny_tokenizer())
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, model=model, max_steps=2, **SETTINGS)
    trainer.train()

    changed = [name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])]
    assert len(changed) == len(before)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        for name in ("stapo/masked_frac", "stapo/masked_tokens", "stapo/candidate_frac", "stapo/entropy_p50"):
            assert name in entry, name
    assert any(entry["stapo/masked_tokens"] > 0 for entry in logged)
    checkpoint = tmp_path / "checkpoint-2"
    assert (checkpoint / "model.safetensors").exists()
    assert (checkpoint / "optimizer.pt").exists()
    assert (checkpoint / "trainer_state.json").exists()

    resumed = build_trainer(STAPOTrainer, STAPOConfig, tmp_path, max_steps=3, **SETTINGS)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3]
    assert (tmp_path / "checkpoint-3" / "model.safetensors").exists()


def test_silenced_tokens_are_recorded_and_model_card_has_settings(tmp_path):
    trainer = build_trainer(
        STAPOTrainer,
        STAPOConfig,
        tmp_path,
        max_steps=2,
        spurious_token_log_steps=2,
        spurious_token_log_max=5,
        **{**SETTINGS, "save_strategy": "no"},
    )
    trainer.train()
    lines = (tmp_path / "spurious_tokens.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert 1 <= len(records) <= 5
    vocabulary = set(trainer.processing_class.get_vocab())
    for record in records:
        assert record["step"] == 2  # only every 2nd step is recorded
        assert record["token"] in vocabulary
        assert record["context"].startswith("What is")  # the prompt (and completion so far) precede the token
        assert 0 < record["prob"] < 0.05 and record["entropy"] > 0 and record["advantage"] > 0
        assert 0 <= record["completion"] < trainer.args.per_device_train_batch_size
        assert 0 <= record["position"] < trainer.args.max_completion_length
    keys = [(record["step"], record["completion"], record["position"]) for record in records]
    assert len(set(keys)) == len(keys)  # each row is one token of one completion

    (tmp_path / "eval_results.json").write_text("not json")  # unreadable results are skipped, not fatal
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "README.md").read_text()
    assert "STAPO" in card and "2602.15620" in card
    assert "| tau_p (probability threshold) | 0.05 |" in card
    assert "| scope of tau_h and of the denominator | step |" in card

    trainer.create_model_card()  # no name, no Hub repository: named after the output folder, loadable from it
    card = (tmp_path / "README.md").read_text()
    assert f"# Model Card for {tmp_path.name}" in card
    assert f'pipeline("text-generation", model="{tmp_path}"' in card
    assert "None" not in card
