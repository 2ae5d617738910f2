"""A whole-optimizer-step reference of STAPO, written without the trainer, and a trainer that records its steps.

`RecordingSTAPOTrainer` keeps, for every optimizer step, the weights it started from, the inputs of every micro-step
(as TRL hands them to the loss), the summed micro-step losses and the accumulated gradients before the optimizer
step. It also keeps the scores the step's plan took (`_score_step`) and the shape of every scoring call.
`whole_step_reference` recomputes that step from scratch: one plain forward per micro-batch (logits ->
log-softmax, not TRL's fused head), the S2T rule with `torch.quantile` over every candidate of the step, and the paper's
objective summed over the kept tokens of the step divided by their number.
"""

import torch
from transformers import AutoModelForCausalLM

from stapo_trl import STAPOTrainer
from stapo_trl.s2t import stapo_policy_loss

INPUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages", "old_per_token_logps")


class RecordingSTAPOTrainer(STAPOTrainer):
    """`STAPOTrainer` that records each optimizer step (use with `max_grad_norm=0`, so gradients are not clipped)."""

    def __init__(self, *args, **kwargs):
        self.steps = []
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch):
        if not self.steps or self.steps[-1]["global_step"] != self.state.global_step:
            weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            self.steps.append(
                {"global_step": self.state.global_step, "weights": weights, "inputs": [], "loss": 0.0}
            )
            self.steps[-1]["scoring_calls"] = []
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.steps[-1]["loss"] += loss.item()
        return loss

    def _compute_loss(self, model, inputs):
        kept = {key: inputs[key].detach().clone() for key in INPUT_KEYS if inputs.get(key) is not None}
        self.steps[-1]["inputs"].append(kept)
        return super()._compute_loss(model, inputs)

    def _plan_step(self, step_inputs):
        plan = super()._plan_step(step_inputs)
        self.steps[-1]["silenced"] = [decision.silenced.clone() for decision in plan.decisions]
        return plan

    def _score_step(self, step_inputs):
        scores = super()._score_step(step_inputs)
        self.steps[-1]["scores"] = [
            (score.per_token_logps.detach().clone(), score.entropies.detach().clone(), score.rows.clone())
            for score in scores
        ]
        return scores

    def _score_call(self, input_ids, position_ids, labels):
        self.steps[-1]["scoring_calls"].append(tuple(input_ids.shape))
        return super()._score_call(input_ids, position_ids, labels)

    def optimizer_step_grads(self):
        """Call from `on_pre_optimizer_step`: keeps the accumulated gradients of the step."""
        self.steps[-1]["grads"] = {
            name: param.grad.detach().clone() for name, param in self.model.named_parameters() if param.grad is not None
        }


def plain_logps_and_entropies(model, micro_batch, temperature=1.0):
    """``(B, T)`` log-probs of the completion tokens and entropies, from the full logits (no fused head)."""
    prompt_ids, completion_ids = micro_batch["prompt_ids"], micro_batch["completion_ids"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([micro_batch["prompt_mask"], micro_batch["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    prompt_length, completion_length = prompt_ids.size(1), completion_ids.size(1)
    logits = logits[:, prompt_length - 1 : prompt_length - 1 + completion_length] / temperature
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    logps = log_probs.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    entropies = -(log_probs.exp() * log_probs).sum(-1)
    return logps, entropies


def whole_step_reference(config, weights, micro_batches, prob_threshold, entropy_quantile, epsilon_low, epsilon_high):
    """STAPO's loss and gradients of one optimizer step over `micro_batches` (every micro-step of every process).

    The policy is a fresh model built from `config` with the step's `weights` (the trainer's own model carries TRL's
    fused LM head, which must not serve as its own reference).

    Returns a dict with `loss`, `grads`, `entropy_threshold` (-inf without candidates), the `silenced` masks, the
    `candidate_entropies` and the `scores` (log-probs and entropies), one per micro-batch.
    """
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(weights)
    model.train()
    model.zero_grad()
    scored = [plain_logps_and_entropies(model, micro_batch) for micro_batch in micro_batches]
    candidates, masks = [], []
    for micro_batch, (logps, _) in zip(micro_batches, scored, strict=True):
        mask = micro_batch["completion_mask"].bool()
        positive = (micro_batch["advantages"] > 0).unsqueeze(1)
        candidates.append(mask & positive & (logps.detach().exp() < prob_threshold))
        masks.append(mask)
    candidate_entropies = [entropies.detach()[found] for (_, entropies), found in zip(scored, candidates, strict=True)]
    all_candidates = torch.cat(candidate_entropies)
    tau_h = torch.quantile(all_candidates, entropy_quantile) if all_candidates.numel() else torch.tensor(float("-inf"))
    silenced = [found & (entropies.detach() < tau_h) for (_, entropies), found in zip(scored, candidates, strict=True)]
    keep = [mask & ~spurious for mask, spurious in zip(masks, silenced, strict=True)]
    num_kept = sum(int(k.sum()) for k in keep)
    loss = 0.0
    for micro_batch, (logps, _), kept in zip(micro_batches, scored, keep, strict=True):
        old = micro_batch.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        loss = loss + stapo_policy_loss(
            logps, old, micro_batch["advantages"], kept, epsilon_low, epsilon_high, num_kept_tokens=num_kept
        )
    loss.backward()
    return {
        "loss": loss.detach(),
        "grads": {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None},
        "entropy_threshold": tau_h,
        "silenced": silenced,
        "candidate_entropies": candidate_entropies,
        "scores": [(logps.detach(), entropies.detach()) for logps, entropies in scored],
    }
