"""STAPOTrainer.train() on the tiny model: it learns, logs the STAPO metrics, checkpoints and resumes."""

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
