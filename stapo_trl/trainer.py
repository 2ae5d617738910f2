"""`STAPOTrainer`: TRL's `GRPOTrainer` with spurious tokens silenced (S2T) and the loss renormalised."""

import json
import os
import textwrap

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from .config import STAPOConfig
from .rewards import PROBLEM_KEYS, reward_problem_counts
from .s2t import find_spurious_tokens, global_quantiles, nonfinite_tokens

# Optional model inputs that `GRPOTrainer._compute_loss` forwards to the policy (TRL 1.16).
_MODEL_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
# Per-token inputs of the loss that may carry NaN/inf (vLLM marks tokens it could not score with NaN).
_LOSS_INPUT_KEYS = ("old_per_token_logps", "ref_per_token_logps", "importance_sampling_ratio")
# Loss types whose denominator is TRL's global token count `num_items_in_batch`.
_GLOBAL_TOKEN_MEAN_LOSSES = ("dapo", "cispo", "vespo")
ENTROPY_PERCENTILES = {"stapo/entropy_p10": 0.1, "stapo/entropy_p50": 0.5, "stapo/entropy_p90": 0.9}
SPURIOUS_TOKENS_FILE = "spurious_tokens.jsonl"
SPURIOUS_TOKEN_COLUMNS = ("step", "token", "context", "prob", "entropy", "advantage")
# Tokens of text shown before a silenced token in its record.
SPURIOUS_TOKEN_CONTEXT = 32


class STAPOTrainer(GRPOTrainer):
    """Trainer for STAPO (arXiv 2602.15620): GRPO/DAPO with spurious tokens silenced (S2T).

    A drop-in replacement for [`~trl.GRPOTrainer`] with the same constructor; `args` is a [`STAPOConfig`].

    How it hooks into TRL 1.16 (the loss is otherwise TRL's own code): `_compute_loss` runs the policy's fused
    log-prob/entropy pass itself, finds the spurious tokens from those detached values, removes them from the
    loss-only `tool_mask` (never from `completion_mask`, which is also the attention mask), rescales
    `num_items_in_batch` for the token-mean losses, and hands the same forward outputs back to
    `GRPOTrainer._compute_loss`, so there is exactly one forward pass and no `(B, T, V)` tensor is added.

    Renormalisation by `loss_type` (silenced tokens leave numerator and denominator):
    - `dapo`, `cispo`, `vespo`: with gradient accumulation 1, the loss of an optimizer step is the sum of the kept
      tokens' losses divided by the number of kept tokens on all processes, exactly. With accumulation, TRL's
      normaliser (the generation batch's token count spread over its micro-steps) is scaled by the kept/total ratio
      of the current micro-batch on all processes; later micro-batches of the same step are not yet scored, so their
      ratio is taken to be the same (an approximation of the order of the masked fraction, ~1e-4 in the paper).
    - `grpo`, `sapo`: per-sequence mean over the kept tokens. `bnpo`: mean over the local kept tokens.
    - `dr_grpo` (a constant denominator) and `luspo` (a per-sequence sum): silenced tokens drop out; there is no
      count to renormalise.
    Tokens with a non-finite log-probability, entropy, advantage or importance weight are excluded the same way and
    counted in `stapo/nonfinite_tokens`.
    """

    _tag_names = ["trl", "grpo", "stapo"]
    _name = "STAPO"
    _paper = {
        "title": "STAPO: Stabilizing Reinforcement Learning for LLMs by Silencing Rare Spurious Tokens",
        "id": "2602.15620",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{stapo2026,
                title        = {{STAPO: Stabilizing Reinforcement Learning for LLMs by Silencing Rare Spurious Tokens}},
                year         = 2026,
                eprint       = {arXiv:2602.15620},
            }"""),
    }

    def __init__(self, model, reward_funcs, args: STAPOConfig | None = None, *positional, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = STAPOConfig(f"{name.split('/')[-1]}-STAPO")
        elif not isinstance(args, STAPOConfig):
            raise TypeError(
                f"STAPOTrainer needs `args` to be a STAPOConfig, got {type(args).__name__}. "
                "Build one with STAPOConfig(**grpo_config.to_dict()) to keep your GRPO settings."
            )
        # The policy's outputs for the loss, computed once by `_compute_loss` and handed back to TRL's loss.
        self._loss_forward = None
        self._loss_entropy_mask = None
        # Silenced tokens of the current recording step, as plain Python values, until the next log.
        self._spurious_token_records = []
        super().__init__(model, reward_funcs, args, *positional, **kwargs)

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        # Mirrors the policy call at the top of `GRPOTrainer._compute_loss` (TRL 1.16).
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in _MODEL_INPUT_KEYS},
        )
        loss_mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        advantages = inputs["advantages"]
        sampler_values = [inputs.get(key) for key in _LOSS_INPUT_KEYS]
        nonfinite = nonfinite_tokens(loss_mask, per_token_logps, entropies, advantages, *sampler_values)
        scored = loss_mask.bool() & ~nonfinite
        entropy_mask = None
        if self.top_entropy_quantile < 1.0:
            entropy_mask = super().get_high_entropy_mask(entropies.detach(), scored, 1 - self.top_entropy_quantile)
        found = find_spurious_tokens(
            per_token_logps,
            entropies,
            advantages,
            scored,
            prob_threshold=self.args.spurious_prob_threshold,
            entropy_quantile=self.args.spurious_entropy_quantile,
            entropy_threshold=self.args.spurious_entropy_threshold,
            gather=self._gather_across_processes,
        )
        silenced = found.spurious if self.args.silence_spurious_tokens else torch.zeros_like(found.spurious)
        keep = scored & ~silenced
        if entropy_mask is not None and self.args.renormalize_entropy_mask:
            keep = keep & entropy_mask
            entropy_mask = keep  # already in the loss mask: TRL's numerator-only mask becomes a no-op

        counts = self.accelerator.reduce(
            torch.stack(
                [
                    loss_mask.sum().double(),
                    scored.sum(),
                    keep.sum(),
                    found.candidates.sum(),
                    silenced.sum(),
                    nonfinite.sum(),
                    entropies.detach()[silenced].sum(),
                    per_token_logps.detach()[silenced].exp().sum(),
                    entropies.detach()[scored].sum(),
                ]
            ).double(),  # exact token counts beyond 2**24
            reduction="sum",
        )
        num_loss_tokens, num_kept = counts[0], counts[2]

        loss_inputs = dict(inputs)
        masks_loss = bool(num_kept < num_loss_tokens)  # the same decision on every process: the counts are global
        if masks_loss:
            loss_inputs["tool_mask"] = keep.to(completion_mask.dtype)
            if self.loss_type in _GLOBAL_TOKEN_MEAN_LOSSES:
                loss_inputs["num_items_in_batch"] = self._kept_num_items(inputs, num_kept, num_loss_tokens, mode)
        if nonfinite.any():
            per_token_logps, entropies = per_token_logps.nan_to_num(0.0, 0.0, 0.0), entropies.nan_to_num(0.0, 0.0, 0.0)
            loss_inputs["advantages"] = advantages.nan_to_num(0.0, 0.0, 0.0)
            for key, value in loss_inputs.items():
                if key in _LOSS_INPUT_KEYS and value is not None:
                    loss_inputs[key] = value.nan_to_num(0.0, 0.0, 0.0)

        self._log_s2t_metrics(mode, counts, found.entropy_threshold, entropies.detach()[scored])
        if mode == "train" and self._is_recording_step():
            self._record_spurious_tokens(inputs, silenced, per_token_logps, entropies, advantages)

        self._loss_forward = (per_token_logps, entropies, aux_loss)
        self._loss_entropy_mask = entropy_mask
        try:
            loss = super()._compute_loss(model, loss_inputs)
        finally:
            self._loss_forward = None
            self._loss_entropy_mask = None
        if masks_loss:
            # TRL averages its `entropy` metric over the loss mask; keep it the entropy of every completion token,
            # so that runs with and without S2T (or the renormalised 80/20 mask) stay comparable.
            self._metrics[mode]["entropy"][-1] = (counts[8] / counts[1].clamp(min=1.0)).item()
        return loss

    def _is_recording_step(self):
        every = self.args.spurious_token_log_steps
        return every > 0 and (self.state.global_step + 1) % every == 0  # global_step counts finished steps

    def _record_spurious_tokens(self, inputs, silenced, per_token_logps, entropies, advantages):
        """Keep the silenced tokens of this micro-batch (up to `spurious_token_log_max` per process and step)."""
        room = self.args.spurious_token_log_max - len(self._spurious_token_records)
        if room <= 0 or not silenced.any():
            return
        prompt_length = inputs["prompt_ids"].size(1)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1).bool()
        advantages = advantages if advantages.dim() == 2 else advantages.unsqueeze(1).expand_as(silenced)
        for row, position in silenced.nonzero().tolist()[:room]:
            end = prompt_length + position
            context = input_ids[row, :end][attention_mask[row, :end]][-SPURIOUS_TOKEN_CONTEXT:]
            self._spurious_token_records.append(
                {
                    "step": self.state.global_step + 1,
                    "token_id": input_ids[row, end].item(),
                    "context_ids": context.tolist(),
                    "prob": per_token_logps[row, position].detach().exp().item(),
                    "entropy": entropies[row, position].item(),
                    "advantage": advantages[row, position].item(),
                }
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            self._add_grading_problems(logs)
        super().log(logs, start_time)
        if self.args.spurious_token_log_steps > 0:  # the same on every process: gather_object is a collective
            self._write_spurious_tokens()

    def _add_grading_problems(self, logs):
        """Completions the math reward scored as wrong because of a problem (no box, timeout, ...), all processes."""
        counts = reward_problem_counts()
        local = torch.tensor([counts[key] for key in PROBLEM_KEYS], dtype=torch.float64, device=self.accelerator.device)
        totals = self.accelerator.reduce(local, reduction="sum")
        for key, total in zip(PROBLEM_KEYS, totals.tolist(), strict=True):
            logs[f"rewards/grading_problems/{key}"] = total

    def _write_spurious_tokens(self):
        """Append the recorded silenced tokens to `spurious_tokens.jsonl` and, with W&B, log them as a table."""
        records, self._spurious_token_records = gather_object(self._spurious_token_records), []
        if not self.accelerator.is_main_process or not records:
            return
        per_step = {}
        for record in records:
            per_step.setdefault(record["step"], []).append(record)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        rows = []
        for step_records in per_step.values():
            for record in step_records[: self.args.spurious_token_log_max]:
                rows.append(
                    {
                        "step": record["step"],
                        "token": tokenizer.decode([record["token_id"]]),
                        "context": tokenizer.decode(record["context_ids"]),
                        "prob": record["prob"],
                        "entropy": record["entropy"],
                        "advantage": record["advantage"],
                        "token_id": record["token_id"],
                    }
                )
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, SPURIOUS_TOKENS_FILE), "a", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
        if "wandb" in self.args.report_to:
            import wandb

            if wandb.run is not None:
                table = wandb.Table(columns=list(SPURIOUS_TOKEN_COLUMNS))
                for row in rows:
                    table.add_data(*(row[column] for column in SPURIOUS_TOKEN_COLUMNS))
                wandb.log({"stapo/spurious_tokens": table}, commit=False)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, followed by the S2T settings and, when they exist, the evaluation results."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        from .evaluation import results_markdown

        args = self.args
        tau_h = (
            f"{args.spurious_entropy_threshold} nats (absolute)"
            if args.spurious_entropy_threshold is not None
            else f"{args.spurious_entropy_quantile}-quantile of the candidates' entropies"
        )
        sections = [
            "## STAPO settings",
            "",
            "| setting | value |",
            "|---|---|",
            f"| S2T (silence spurious tokens) | {'on' if args.silence_spurious_tokens else 'off'} |",
            f"| tau_p (probability threshold) | {args.spurious_prob_threshold} |",
            f"| tau_h (entropy threshold) | {tau_h} |",
            f"| loss_type | {args.loss_type} |",
            f"| clip range (epsilon, epsilon_high) | {args.epsilon}, {args.epsilon_high} |",
            f"| beta (KL) | {args.beta} |",
            f"| top_entropy_quantile | {args.top_entropy_quantile} |",
            f"| learning_rate | {args.learning_rate} |",
            f"| num_generations | {args.num_generations} |",
            f"| max_completion_length | {args.max_completion_length} |",
            f"| temperature | {args.temperature} |",
        ]
        results = results_markdown(args.output_dir)
        if results:
            sections += ["", "## Evaluation", "", results]
        path = os.path.join(args.output_dir, "README.md")
        with open(path, "a", encoding="utf-8") as file:
            file.write("\n" + "\n".join(sections) + "\n")

    def _kept_num_items(self, inputs, num_kept, num_loss_tokens, mode):
        """`num_items_in_batch` such that TRL's token-mean denominator counts only the kept tokens.

        TRL 1.16 divides the summed loss by `num_items_in_batch / num_processes * accumulation / steps_per_generation`
        in training and by `num_items_in_batch / num_processes` in evaluation.
        """
        if mode == "train" and self.current_gradient_accumulation_steps == 1:
            num_items = num_kept * self.args.steps_per_generation
        else:
            num_items = inputs["num_items_in_batch"] * num_kept / num_loss_tokens
        return num_items.float()

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if self._loss_forward is not None:
            forward, self._loss_forward = self._loss_forward, None
            return forward
        return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def get_high_entropy_mask(self, entropies, mask, threshold):
        if self._loss_entropy_mask is not None:
            return self._loss_entropy_mask
        return super().get_high_entropy_mask(entropies, mask, threshold)

    def _gather_across_processes(self, values: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D tensor of any length over all processes, in rank order."""
        if self.accelerator.num_processes == 1:
            return values
        lengths = self.accelerator.gather(torch.tensor([values.numel()], device=values.device))
        padded = self.accelerator.pad_across_processes(values, dim=0)
        gathered = self.accelerator.gather(padded).view(len(lengths), -1)
        return torch.cat([row[:length] for row, length in zip(gathered, lengths.tolist(), strict=True)])

    def _log_s2t_metrics(self, mode, counts, entropy_threshold, scored_entropies):
        (_, num_scored, _, num_candidates, num_silenced, num_nonfinite, silenced_entropy, silenced_prob, _) = (
            counts.tolist()
        )
        metrics = self._metrics[mode]
        metrics["stapo/masked_tokens"].append(num_silenced)
        metrics["stapo/masked_frac"].append(num_silenced / max(num_scored, 1.0))
        metrics["stapo/candidate_frac"].append(num_candidates / max(num_scored, 1.0))
        metrics["stapo/nonfinite_tokens"].append(num_nonfinite)
        if entropy_threshold is not None:
            metrics["stapo/entropy_threshold"].append(entropy_threshold.item())
        if num_silenced > 0:
            metrics["stapo/masked_entropy_mean"].append(silenced_entropy / num_silenced)
            metrics["stapo/masked_prob_mean"].append(silenced_prob / num_silenced)
        percentiles = global_quantiles(
            scored_entropies, tuple(ENTROPY_PERCENTILES.values()), self._gather_across_processes
        )
        if percentiles is not None:
            for name, value in zip(ENTROPY_PERCENTILES, percentiles.tolist(), strict=True):
                metrics[name].append(value)
