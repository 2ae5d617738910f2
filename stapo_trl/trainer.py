"""`STAPOTrainer`: TRL's `GRPOTrainer` with spurious tokens silenced (S2T) and the loss renormalised."""

import json
import os
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from . import hub
from .config import STAPOConfig, fall_back_to_offline_wandb
from .rewards import PROBLEM_KEYS, reward_problem_counts
from .s2t import (
    ENTROPY_HISTOGRAM_LOG_BINS,
    S2T_STATISTICS,
    entropy_histogram,
    find_spurious_tokens_in_batches,
    histogram_quantiles,
    nonfinite_tokens,
    per_token_advantages,
    s2t_statistics,
)

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
# Entries that `_generate_and_score_completions` adds to a generation batch when TRL's generation-time pass scored it:
# the entropies of that pass and the optimizer step whose weights it used (one value per completion, so that TRL's
# shuffle and split carry them along with the completions).
_SAMPLER_ENTROPIES = "stapo_sampler_entropies"
_SCORED_AT_STEP = "stapo_scored_at_step"
_STAT = {name: index for index, name in enumerate(S2T_STATISTICS)}
ENTROPY_PERCENTILES = {"stapo/entropy_p10": 0.1, "stapo/entropy_p50": 0.5, "stapo/entropy_p90": 0.9}
SPURIOUS_TOKENS_FILE = "spurious_tokens.jsonl"
SPURIOUS_TOKEN_COLUMNS = ("step", "completion", "position", "token", "context", "prob", "entropy", "advantage")
# Tokens of text shown before a silenced token in its record.
SPURIOUS_TOKEN_CONTEXT = 32


@dataclass
class PolicyScores:
    """The current policy's log-probs and entropies on the rows of a micro-batch that a decision needs.

    Attributes:
        per_token_logps: ``(B, T)`` log-probabilities of the completion tokens; 0 in rows not scored.
        entropies: ``(B, T)`` entropies (nats); 0 in rows not scored.
        rows: ``(B,)`` bool, the rows scored.
    """

    per_token_logps: torch.Tensor
    entropies: torch.Tensor
    rows: torch.Tensor


@dataclass
class MicroBatchS2T:
    """The S2T decision for one micro-batch; every mask is ``(B, T)`` bool.

    Attributes:
        loss_mask: the loss tokens before S2T (`completion_mask`, times `tool_mask` when TRL has one).
        scored: the loss tokens with finite inputs.
        nonfinite: the loss tokens excluded because a log-prob, entropy, advantage or sampler value is NaN/inf.
        candidates: the loss tokens with a positive advantage and a probability below tau_p.
        silenced: the spurious tokens removed from the loss (none when `silence_spurious_tokens=False`).
        keep: the tokens that stay in the loss.
        entropy_mask: TRL's 80/20 mask (`top_entropy_quantile < 1`), or ``None``.
        statistics: ``(len(S2T_STATISTICS),)`` float64 counts of this process's micro-batch (`s2t_statistics`); the
            entropy and probability sums cover only the rows in `scores`.
        scores: what the decision was taken from.
    """

    loss_mask: torch.Tensor
    scored: torch.Tensor
    nonfinite: torch.Tensor
    candidates: torch.Tensor
    silenced: torch.Tensor
    keep: torch.Tensor
    entropy_mask: torch.Tensor | None
    statistics: torch.Tensor
    scores: PolicyScores


def _loss_mask(inputs) -> torch.Tensor:
    """``(B, T)`` the loss tokens before S2T: `completion_mask`, times `tool_mask` when TRL has one."""
    loss_mask = inputs["completion_mask"]
    return loss_mask * inputs["tool_mask"] if "tool_mask" in inputs else loss_mask


@dataclass
class StepPlan:
    """What `spurious_stats_scope="step"` decides at the first micro-step of an optimizer step.

    Attributes:
        first_micro_step: TRL's micro-step counter (`GRPOTrainer._step`) at the step's first micro-step.
        inputs: the prepared inputs of every micro-step of the step, in order (what TRL's `_prepare_inputs` returns).
        decisions: the S2T decision of each micro-batch, from one `tau_h` over the whole step on all processes.
        statistics: ``(num_micro_steps, len(S2T_STATISTICS))`` the decisions' counts summed over processes.
    """

    first_micro_step: int
    inputs: list
    decisions: list
    statistics: torch.Tensor


def pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Group rows into as few model calls as `budget` allows, a call costing its rows x its longest row.

    Rows are taken longest first and each call is filled while the cost stays within `budget` (for calls of rows
    taken in order of length, this greedy grouping makes the fewest calls); a row longer than `budget` gets a call of
    its own.

    Args:
        lengths: the length (positions) of each row.
        budget: the most positions of one call.

    Returns:
        The indices into `lengths` of each call's rows, longest first.
    """
    calls = []
    for index in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        if calls and (len(calls[-1]) + 1) * lengths[calls[-1][0]] <= budget:
            calls[-1].append(index)
        else:
            calls.append([index])
    return calls


@dataclass
class S2TWindow:
    """This process's sums over a logging window, turned into the `stapo/*` metrics by `STAPOTrainer.log`.

    The sums stay on the accelerator (no synchronisation per micro-step) until the window is logged.
    """

    statistics: torch.Tensor = field(default_factory=lambda: torch.zeros(len(S2T_STATISTICS), dtype=torch.float64))
    histogram: torch.Tensor = field(
        default_factory=lambda: torch.zeros(ENTROPY_HISTOGRAM_LOG_BINS + 1, dtype=torch.float64)
    )
    entropy_thresholds: list = field(default_factory=list)
    updates: int = 0

    def add(self, statistics: torch.Tensor, entropies: torch.Tensor) -> None:
        """Add one micro-batch: its `s2t_statistics` and the entropies of its scored tokens (any shape)."""
        self.statistics = self.statistics.to(statistics.device) + statistics
        self.histogram = self.histogram.to(entropies.device) + entropy_histogram(entropies)

    def totals(self, device) -> torch.Tensor:
        """``(len(S2T_STATISTICS) + ENTROPY_HISTOGRAM_LOG_BINS + 2,)``: the sums, the histogram and the update count."""
        updates = torch.tensor([float(self.updates)], dtype=torch.float64, device=device)
        return torch.cat([self.statistics.to(device), self.histogram.to(device), updates])


class STAPOTrainer(GRPOTrainer):
    """Trainer for STAPO (arXiv 2602.15620): GRPO/DAPO with spurious tokens silenced (S2T).

    A drop-in replacement for [`~trl.GRPOTrainer`] with the same constructor; `args` is a [`STAPOConfig`].

    How it hooks into TRL 1.16 (the loss is otherwise TRL's own code): `_compute_loss` runs the policy's fused
    log-prob/entropy pass itself, takes the S2T decision for the micro-batch, removes the silenced tokens from the
    loss-only `tool_mask` (never from `completion_mask`, which is also the attention mask), sets `num_items_in_batch`
    for the token-mean losses (a count below 1, which TRL would clamp, goes in as 1 and the loss is scaled back), and
    hands the same forward outputs back to `GRPOTrainer._compute_loss`; no `(B, T, V)` tensor is added.

    Where the decision comes from (`spurious_stats_scope`):
    - `"step"` (the paper's rule): `get_batch_samples` hands over the raw batches of the coming optimizer step; at its
      first micro-step `_prepare_inputs` runs TRL's own `_prepare_inputs` for every micro-step of the step (generating
      exactly when TRL would), scores the completions that can hold a candidate (A > 0) with the current weights
      without gradient, trimmed and packed (`_score_step`; TRL's generation-time pass is reused when it ran with the
      same weights), and takes one `tau_h` over the step's candidates on all processes. The micro-steps then replay
      TRL's inputs in order with that decision.
    - `"micro_batch"`, and evaluation: the decision of the current micro-batch (all processes) from the loss's own
      forward pass.

    Renormalisation by `loss_type` (silenced tokens leave numerator and denominator):
    - `dapo`, `cispo`, `vespo`: with `"step"`, the loss of an optimizer step is the sum of the kept tokens' losses over
      every micro-step and process divided by the number of kept tokens of the step on all processes, for any
      gradient accumulation, `steps_per_generation` and number of processes. When nothing is silenced this is TRL's
      normaliser only when gradient accumulation equals `steps_per_generation`; otherwise TRL divides every step by
      the generation batch's average token count per step, and `"step"` by the step's own count. With
      `"micro_batch"`, TRL's normaliser (the generation batch's token count spread over its micro-steps) is scaled by
      the current micro-batch's kept share on all processes, and left untouched when nothing is silenced.
    - `grpo`, `sapo`: per-sequence mean over the kept tokens. `bnpo`: mean over the local kept tokens.
    - `dr_grpo` (a constant denominator) and `luspo` (a per-sequence sum): silenced tokens drop out; there is no
      count to renormalise.
    Tokens with a non-finite log-probability, entropy, advantage or importance weight are excluded the same way and
    counted in `stapo/nonfinite_tokens`.

    Metrics: every process adds up the counts of each micro-batch over the logging window (`S2TWindow`); `log` sums
    them over processes once and logs ratios of sums (`stapo/masked_frac` = silenced / scored tokens of the window,
    `stapo/masked_tokens` = silenced tokens per optimizer step, ...). Entropy percentiles come from a fixed-bin
    histogram added up the same way.
    """

    # What the model card says: `stapo-train` sets the method it ran (`--method`) and its training set's Hub id;
    # otherwise the method is read from the settings (`stapo_trl.hub.method_of`) and the card names no dataset.
    method: str | None = None
    dataset_name: str | None = None

    @property
    def card_method(self) -> str:
        return self.method or hub.method_of(self.args)

    # TRL's model-card attributes (read by `GRPOTrainer.__init__` for the model's tags), those of the method run.
    @property
    def _tag_names(self):
        return ["trl", "grpo", *hub.method_info(self.card_method).tags]

    @property
    def _name(self):
        return hub.method_info(self.card_method).name

    @property
    def _paper(self):
        info = hub.method_info(self.card_method)
        return {"title": info.paper_title, "id": info.paper_id, "citation": info.citation} if info.paper_id else {}

    def __init__(self, model, reward_funcs=None, args: STAPOConfig | None = None, *positional, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = STAPOConfig(f"{name.split('/')[-1]}-STAPO")
        elif not isinstance(args, STAPOConfig):
            raise TypeError(
                f"STAPOTrainer needs `args` to be a STAPOConfig, got {type(args).__name__}. "
                "Build one with STAPOConfig.from_grpo_config(grpo_config) to keep your GRPO settings."
            )
        fall_back_to_offline_wandb(args.report_to, args.output_dir)  # as stapo-train does: no W&B key, log offline
        # The policy's outputs for the loss, computed once by `_compute_loss` and handed back to TRL's loss.
        self._loss_forward = None
        self._loss_entropy_mask = None
        # spurious_stats_scope="step": the raw batches of the coming optimizer step, then the step's decisions.
        self._pending_step_batches = None
        self._step_plan = None
        # While TRL generates a training batch (step scope): the log-probs and entropies of every pass it makes over the
        # policy, among which its old-log-prob pass, whose entropies S2T reuses.
        self._generation_policy_passes = None
        self._s2t_windows = {"train": S2TWindow(), "eval": S2TWindow()}
        # Silenced tokens of the current recording step, as plain Python values, until the next log.
        self._spurious_token_records = []
        super().__init__(model, reward_funcs, args, *positional, **kwargs)

    @property
    def _scores_whole_steps(self) -> bool:
        """Whether training decisions are taken over whole optimizer steps (`spurious_stats_scope="step"`)."""
        return self.args.silence_spurious_tokens and self.args.spurious_stats_scope == "step"

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._scores_whole_steps:
            self._pending_step_batches = batch_samples
        return batch_samples, num_items_in_batch

    def _prepare_inputs(self, generation_batch):
        if not (self.model.training and self._scores_whole_steps):
            return super()._prepare_inputs(generation_batch)
        if self._pending_step_batches is not None:  # the first micro-step of an optimizer step
            batches, self._pending_step_batches = self._pending_step_batches, None
            self._step_plan = self._plan_step(self._prepare_step_inputs(batches))
        return self._step_plan.inputs[self._micro_step_in_plan()]

    def _prepare_step_inputs(self, batches):
        """TRL's `_prepare_inputs` for each micro-step of the coming optimizer step, in order.

        TRL decides from its micro-step counter `_step` when to generate and which slice of the generation batch to
        return; running it with the counter of each coming micro-step generates exactly the batches, in the same
        order, that the micro-steps would have generated one by one (the weights do not change within a step).
        """
        first_micro_step = self._step
        prepared = []
        try:
            for offset, batch in enumerate(batches):
                self._step = first_micro_step + offset
                prepared.append(super()._prepare_inputs(batch))
        finally:
            self._step = first_micro_step
        return prepared

    def _plan_step(self, step_inputs) -> StepPlan:
        """Score the step's micro-batches and decide S2T with one `tau_h` for the whole step (all processes)."""
        decisions = self._decide(step_inputs, self._score_step(step_inputs), "train")
        statistics = self.accelerator.reduce(torch.stack([decision.statistics for decision in decisions]), "sum")
        return StepPlan(self._step, step_inputs, decisions, statistics)

    def _micro_step_in_plan(self) -> int:
        plan = self._step_plan
        index = -1 if plan is None else self._step - plan.first_micro_step
        if plan is None or not 0 <= index < len(plan.inputs):
            raise RuntimeError(
                "spurious_stats_scope='step' decides S2T over whole optimizer steps, prepared when `Trainer.train()` "
                "fetches a step's batches; this micro-step belongs to no prepared step. Train through "
                "`trainer.train()`, or set spurious_stats_scope='micro_batch' to compute the loss of single batches."
            )
        return index

    def _score_step(self, step_inputs) -> list[PolicyScores]:
        """The current policy's log-probs and entropies wherever the step's S2T decision needs them, without gradient.

        A micro-batch that TRL's generation-time pass scored with the weights of this optimizer step is taken from that
        pass. In the others only the rows that can hold a candidate are scored (`_rows_to_score`), each trimmed to its
        own prompt + completion tokens, in calls grouped over the whole step (`pack_rows`, at most
        `spurious_scoring_token_budget` positions each). The other rows are never candidates: their tokens are counted
        from the training forward of their micro-step (see `_count_in_window`).
        """
        scores = [None] * len(step_inputs)
        unscored = []
        for index, inputs in enumerate(step_inputs):
            scored_at = inputs.get(_SCORED_AT_STEP)
            if scored_at is not None and int(scored_at[0]) == self.state.global_step:
                every_row = torch.ones_like(scored_at, dtype=torch.bool)
                scores[index] = PolicyScores(inputs["old_per_token_logps"], inputs[_SAMPLER_ENTROPIES], every_row)
            else:
                unscored.append(index)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self._scores_whole_micro_batches([step_inputs[index] for index in unscored]):
                for index in unscored:
                    scores[index] = self._score_whole_micro_batch(step_inputs[index])
            else:
                packed = self._score_rows([step_inputs[index] for index in unscored], self._scoring_budget(step_inputs))
                for index, micro_batch_scores in zip(unscored, packed, strict=True):
                    scores[index] = micro_batch_scores
        return scores

    def _scores_whole_micro_batches(self, step_inputs) -> bool:
        """Whether these micro-batches are scored whole: multimodal inputs are laid out per image or tile, not per
        row, so they cannot be trimmed row by row."""
        return any(inputs.get(key) is not None for inputs in step_inputs for key in _MODEL_INPUT_KEYS)

    def _score_whole_micro_batch(self, inputs) -> PolicyScores:
        """Every row of a micro-batch as TRL pads it, chunked by the training micro-batch size.

        Mirrors TRL 1.16's generation-time pass (`_generate_and_score_completions`): the same fused path.
        """
        completion_ids = inputs["completion_ids"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            self.model,
            torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            completion_ids.size(1),
            batch_size=self.args.per_device_train_batch_size,
            compute_entropy=True,
            **{key: inputs.get(key) for key in _MODEL_INPUT_KEYS},
        )
        return PolicyScores(logps, entropies, torch.ones(logps.size(0), dtype=torch.bool, device=logps.device))

    def _scoring_budget(self, step_inputs) -> int:
        """Most positions of one scoring call: `spurious_scoring_token_budget`, by default the step's largest training
        micro-batch."""
        if self.args.spurious_scoring_token_budget is not None:
            return self.args.spurious_scoring_token_budget
        return max(inputs["prompt_ids"].numel() + inputs["completion_ids"].numel() for inputs in step_inputs)

    def _rows_to_score(self, inputs) -> torch.Tensor:
        """``(B,)`` bool: the rows a decision needs scored.

        A candidate needs a positive advantage on a loss token, so only such rows; every row with a loss token when
        TRL's 80/20 mask (`top_entropy_quantile < 1`) needs the entropy of every token.
        """
        loss_mask = _loss_mask(inputs).bool()
        if self.top_entropy_quantile < 1.0:
            return loss_mask.any(dim=1)
        return (loss_mask & (per_token_advantages(inputs["advantages"], loss_mask) > 0)).any(dim=1)

    def _score_rows(self, step_inputs, budget: int) -> list[PolicyScores]:
        """Score `_rows_to_score` of each micro-batch, each row trimmed to its real tokens, in calls of `pack_rows`.

        TRL left-pads prompts and right-pads completions, so a row's real tokens are one contiguous span of its padded
        layout. Each span goes into its call at the start of a row, right-padded to the call's longest span, with the
        position ids it has in the padded layout: attention sees the same keys with the same rotary positions, and a
        causal model never looks at the right padding, so no attention mask is needed. The values equal those of the
        padded pass in exact arithmetic; in floating point they can differ by rounding (kernels reduce over different
        shapes).

        Every process makes the same number of model calls (a process with fewer adds calls of two padding tokens), so
        that engines that gather parameters inside each forward (ZeRO-3, FSDP) stay in step.
        """
        spans = []  # (micro-batch, row, first column, prompt tokens, completion tokens)
        for index, inputs in enumerate(step_inputs):
            prompt_tokens = inputs["prompt_mask"].sum(dim=1)
            completion_tokens = inputs["completion_mask"].sum(dim=1)
            rows = self._rows_to_score(inputs).nonzero().flatten()
            prompt_width = inputs["prompt_ids"].size(1)
            for row, prompt, completion in zip(
                rows.tolist(), prompt_tokens[rows].tolist(), completion_tokens[rows].tolist(), strict=True
            ):
                spans.append((index, row, prompt_width - prompt, prompt, completion))
        calls = pack_rows([prompt + completion for *_, prompt, completion in spans], budget)
        device = self.accelerator.device
        most_calls = len(calls)
        if self.accelerator.num_processes > 1:
            most_calls = int(self.accelerator.gather(torch.tensor([len(calls)], device=device)).max())

        outputs = []
        for call in calls:
            length = spans[call[0]][3] + spans[call[0]][4]
            input_ids = torch.full((len(call), length), self._tokenizer.pad_token_id, dtype=torch.long, device=device)
            labels = torch.full_like(input_ids, -100)
            for position, span_index in enumerate(call):
                index, row, first, prompt, completion = spans[span_index]
                inputs = step_inputs[index]
                ids = torch.cat([inputs["prompt_ids"][row], inputs["completion_ids"][row]])
                ids = ids[first : first + prompt + completion]
                input_ids[position, : ids.numel()] = ids
                labels[position, prompt : prompt + completion] = ids[prompt:]
            first_columns = torch.tensor([spans[span_index][2] for span_index in call], device=device)
            position_ids = first_columns.unsqueeze(1) + torch.arange(length, device=device)
            outputs.append(self._score_call(input_ids, position_ids, labels))
        for _ in range(most_calls - len(calls)):
            padding = torch.full((1, 2), self._tokenizer.pad_token_id, dtype=torch.long, device=device)
            self._score_call(padding, torch.arange(2, device=device).unsqueeze(0), torch.full_like(padding, -100))

        dtype = outputs[0][0].dtype if outputs else torch.float32
        scores = [
            PolicyScores(
                torch.zeros(inputs["completion_ids"].shape, dtype=dtype, device=device),
                torch.zeros(inputs["completion_ids"].shape, dtype=dtype, device=device),
                torch.zeros(inputs["completion_ids"].size(0), dtype=torch.bool, device=device),
            )
            for inputs in step_inputs
        ]
        for call, (logps, entropies) in zip(calls, outputs, strict=True):
            for position, span_index in enumerate(call):
                index, row, _, prompt, completion = spans[span_index]
                # the log-prob of token t comes from the position before it
                scores[index].per_token_logps[row, :completion] = logps[position, prompt - 1 : prompt - 1 + completion]
                scores[index].entropies[row, :completion] = entropies[position, prompt - 1 : prompt - 1 + completion]
                scores[index].rows[row] = True
        return scores

    def _score_call(self, input_ids, position_ids, labels):
        """``(R, L - 1)`` log-probs and entropies of the tokens `labels` names, from one call of the policy.

        Mirrors the model call of TRL 1.16's `_get_per_token_logps_and_entropies` (the fused LM head under the
        accelerator's autocast), with the rows' own position ids.
        """
        with self.accelerator.autocast():
            outputs = self.model(input_ids=input_ids, position_ids=position_ids, labels=labels, fused_lm_head=True)
        return outputs.log_probs, outputs.entropy

    def _generate_and_score_completions(self, inputs):
        capture = self.model.training and self._scores_whole_steps
        self._generation_policy_passes = [] if capture else None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            passes, self._generation_policy_passes = self._generation_policy_passes, None
        # TRL's generation-time pass is the policy pass whose log-probs TRL kept as `old_per_token_logps`; it may make
        # others over the same model (the reference's through a disabled PEFT adapter) before or after it.
        old_logps = output.get("old_per_token_logps")
        entropies = next((entropies for logps, entropies in passes or () if logps is old_logps), None)
        if entropies is not None:
            output[_SAMPLER_ENTROPIES] = entropies
            output[_SCORED_AT_STEP] = torch.full(
                (entropies.size(0),), self.state.global_step, dtype=torch.long, device=entropies.device
            )
        return output

    def _decide(self, batches, scores, mode) -> list[MicroBatchS2T]:
        """The S2T decision for micro-batches that share one `tau_h` (a collective: every process calls it).

        Args:
            batches: the inputs of each micro-batch (as TRL hands them to `_compute_loss`).
            scores: the `PolicyScores` of each micro-batch; only its scored rows can hold candidates.
            mode: `"train"` or `"eval"`: the logging window the threshold goes to.
        """
        loss_masks, nonfinite, scored, entropy_masks = [], [], [], []
        for inputs, score in zip(batches, scores, strict=True):
            loss_mask = _loss_mask(inputs)
            sampler_values = [inputs.get(key) for key in _LOSS_INPUT_KEYS]
            bad = nonfinite_tokens(
                loss_mask, score.per_token_logps, score.entropies, inputs["advantages"], *sampler_values
            )
            loss_masks.append(loss_mask)
            nonfinite.append(bad)
            scored.append(loss_mask.bool() & ~bad)
            entropy_masks.append(
                super().get_high_entropy_mask(score.entropies.detach(), scored[-1], 1 - self.top_entropy_quantile)
                if self.top_entropy_quantile < 1.0
                else None
            )
        found = find_spurious_tokens_in_batches(
            [score.per_token_logps for score in scores],
            [score.entropies for score in scores],
            [inputs["advantages"] for inputs in batches],
            [mask & score.rows.unsqueeze(1) for mask, score in zip(scored, scores, strict=True)],
            prob_threshold=self.args.spurious_prob_threshold,
            entropy_quantile=self.args.spurious_entropy_quantile,
            entropy_threshold=self.args.spurious_entropy_threshold,
            gather=self._gather_across_processes,
        )
        if found and found[0].entropy_threshold is not None:
            self._s2t_windows[mode].entropy_thresholds.append(found[0].entropy_threshold)
        decisions = []
        for index, spurious in enumerate(found):
            silenced = spurious.spurious if self.args.silence_spurious_tokens else torch.zeros_like(spurious.spurious)
            keep = scored[index] & ~silenced
            entropy_mask = entropy_masks[index]
            if entropy_mask is not None and self.args.renormalize_entropy_mask:
                keep = keep & entropy_mask
                entropy_mask = keep  # already in the loss mask: TRL's numerator-only mask becomes a no-op
            score = scores[index]
            statistics = s2t_statistics(
                loss_masks[index], scored[index], keep, spurious.candidates, silenced, nonfinite[index],
                score.per_token_logps, score.entropies,
            )  # fmt: skip
            decisions.append(
                MicroBatchS2T(
                    loss_masks[index], scored[index], nonfinite[index], spurious.candidates, silenced, keep,
                    entropy_mask, statistics, score,
                )  # fmt: skip
            )
        return decisions

    def _count_in_window(self, mode, decision, nonfinite, keep, per_token_logps, entropies) -> torch.Tensor:
        """Add a micro-step's tokens to the logging window; returns their `s2t_statistics` (this process).

        Each token counts with the values its decision was taken from: the decision's scores in the rows they cover,
        this micro-step's forward in the others (rows that could hold no candidate and were not scored ahead).
        """
        rows = decision.scores.rows.unsqueeze(1)
        logps = torch.where(rows, decision.scores.per_token_logps, per_token_logps.detach())
        entropies = torch.where(rows, decision.scores.entropies, entropies.detach())
        scored = decision.loss_mask.bool() & ~nonfinite
        statistics = s2t_statistics(
            decision.loss_mask, scored, keep, decision.candidates, decision.silenced, nonfinite, logps, entropies
        )
        self._s2t_windows[mode].add(statistics, entropies[scored])
        return statistics

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
        advantages = inputs["advantages"]
        sampler_values = [inputs.get(key) for key in _LOSS_INPUT_KEYS]
        if mode == "train" and self._scores_whole_steps:
            micro_step = self._micro_step_in_plan()
            decision = self._step_plan.decisions[micro_step]
            statistics = self._step_plan.statistics[micro_step]
            step_kept = self._step_plan.statistics[:, _STAT["kept_tokens"]].sum()
            # TRL divides by `num_items_in_batch / processes * accumulation / steps_per_generation`: this makes it the
            # kept tokens of the whole step on all processes.
            num_items = step_kept * self.args.steps_per_generation / self.current_gradient_accumulation_steps
        else:
            micro_step = self._step % self.args.gradient_accumulation_steps
            every_row = torch.ones(advantages.size(0), dtype=torch.bool, device=advantages.device)
            scores = PolicyScores(per_token_logps.detach(), entropies.detach(), every_row)
            (decision,) = self._decide([inputs], [scores], mode)
            statistics = self.accelerator.reduce(decision.statistics, "sum")
            num_items = (
                inputs["num_items_in_batch"]
                * statistics[_STAT["kept_tokens"]]
                / statistics[_STAT["loss_tokens"]].clamp(min=1.0)
            )
        # The forward of this micro-step may find non-finite values the scoring pass did not (numerics only).
        nonfinite = decision.nonfinite | nonfinite_tokens(
            decision.loss_mask, per_token_logps, entropies, advantages, *sampler_values
        )
        keep = decision.keep & ~nonfinite
        window_statistics = self._count_in_window(mode, decision, nonfinite, keep, per_token_logps, entropies)
        if mode == "eval" or self.accelerator.sync_gradients:
            self._s2t_windows[mode].updates += 1

        loss_inputs = dict(inputs)
        masks_loss = bool(statistics[_STAT["kept_tokens"]] < statistics[_STAT["loss_tokens"]])  # global: same everywhere
        if masks_loss:
            loss_inputs["tool_mask"] = keep.to(completion_mask.dtype)
        loss_scale = 1.0
        if self.loss_type in _GLOBAL_TOKEN_MEAN_LOSSES and float(num_items) != float(inputs["num_items_in_batch"]):
            # TRL 1.16 clamps the count it divides by to >= 1, and an almost empty step under gradient accumulation
            # asks for less (few kept tokens * steps_per_generation / accumulation): such a count goes in as 1 and the
            # loss is scaled back to it. TRL's terms beside the policy loss (entropy bonus, router loss) scale along.
            handed = max(float(num_items), 1.0)
            loss_inputs["num_items_in_batch"] = torch.as_tensor(handed, device=per_token_logps.device)
            if float(num_items) > 0.0:
                loss_scale = handed / float(num_items)
        if nonfinite.any():
            per_token_logps, entropies = per_token_logps.nan_to_num(0.0, 0.0, 0.0), entropies.nan_to_num(0.0, 0.0, 0.0)
            loss_inputs["advantages"] = advantages.nan_to_num(0.0, 0.0, 0.0)
            for key, value in loss_inputs.items():
                if key in _LOSS_INPUT_KEYS and value is not None:
                    loss_inputs[key] = value.nan_to_num(0.0, 0.0, 0.0)

        if mode == "train" and self._is_recording_step():
            self._record_spurious_tokens(inputs, decision.silenced, per_token_logps, entropies, advantages, micro_step)

        self._loss_forward = (per_token_logps, entropies, aux_loss)
        self._loss_entropy_mask = decision.entropy_mask
        try:
            loss = super()._compute_loss(model, loss_inputs) * loss_scale
        finally:
            self._loss_forward = None
            self._loss_entropy_mask = None
        if masks_loss:
            # TRL averages its `entropy` metric over the loss mask; keep it the entropy of every completion token,
            # so that runs with and without S2T (or the renormalised 80/20 mask) stay comparable. (The step plan's
            # counts hold no entropy of the rows it did not score: take this micro-step's, on all processes.)
            if mode == "train" and self._scores_whole_steps:
                statistics = self.accelerator.reduce(window_statistics, "sum")
            scored_entropy = statistics[_STAT["scored_entropy_sum"]] / statistics[_STAT["scored_tokens"]].clamp(min=1.0)
            self._metrics[mode]["entropy"][-1] = scored_entropy.item()
        return loss

    def _is_recording_step(self):
        every = self.args.spurious_token_log_steps
        return every > 0 and (self.state.global_step + 1) % every == 0  # global_step counts finished steps

    def _record_spurious_tokens(self, inputs, silenced, per_token_logps, entropies, advantages, micro_step):
        """Keep the silenced tokens of this micro-batch (up to `spurious_token_log_max` per process and step).

        A record's `completion` is the completion's index among the optimizer step's completions, counted process by
        process, then micro-batch by micro-batch, then row by row; `position` is the token's index in it.
        """
        room = self.args.spurious_token_log_max - len(self._spurious_token_records)
        if room <= 0 or not silenced.any():
            return
        prompt_length = inputs["prompt_ids"].size(1)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1).bool()
        advantages = advantages if advantages.dim() == 2 else advantages.unsqueeze(1).expand_as(silenced)
        rows = silenced.size(0)
        first_completion = (self.accelerator.process_index * self.current_gradient_accumulation_steps + micro_step) * rows
        for row, position in silenced.nonzero().tolist()[:room]:
            end = prompt_length + position
            context = input_ids[row, :end][attention_mask[row, :end]][-SPURIOUS_TOKEN_CONTEXT:]
            self._spurious_token_records.append(
                {
                    "step": self.state.global_step + 1,
                    "completion": first_completion + row,
                    "position": position,
                    "token_id": input_ids[row, end].item(),
                    "context_ids": context.tolist(),
                    "prob": per_token_logps[row, position].detach().exp().item(),
                    "entropy": entropies[row, position].item(),
                    "advantage": advantages[row, position].item(),
                }
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        for name, value in self._finish_s2t_window(mode).items():
            self._metrics[mode][name] = [value]
        if self.model.training:
            self._add_grading_problems(logs)
        super().log(logs, start_time)
        if self.args.spurious_token_log_steps > 0:  # the same on every process: gather_object is a collective
            self._write_spurious_tokens()

    def _finish_s2t_window(self, mode) -> dict[str, float]:
        """The `stapo/*` metrics of the logging window that ends now, from its sums over all processes.

        A collective: every process calls it (from `log`). The window starts again empty.
        """
        window, self._s2t_windows[mode] = self._s2t_windows[mode], S2TWindow()
        totals = self.accelerator.reduce(window.totals(self.accelerator.device), "sum").cpu()
        if window.updates == 0:  # the same on every process: each runs every micro-step
            return {}
        sums = dict(zip(S2T_STATISTICS, totals[: len(S2T_STATISTICS)].tolist(), strict=True))
        histogram = totals[len(S2T_STATISTICS) : -1]
        scored, silenced = max(sums["scored_tokens"], 1.0), sums["silenced_tokens"]
        metrics = {
            "stapo/masked_tokens": silenced / window.updates,
            "stapo/masked_frac": silenced / scored,
            "stapo/candidate_frac": sums["candidate_tokens"] / scored,
            "stapo/nonfinite_tokens": sums["nonfinite_tokens"] / window.updates,
        }
        if window.entropy_thresholds:
            metrics["stapo/entropy_threshold"] = torch.stack(window.entropy_thresholds).mean().item()
        if silenced > 0:
            metrics["stapo/masked_entropy_mean"] = sums["silenced_entropy_sum"] / silenced
            metrics["stapo/masked_prob_mean"] = sums["silenced_prob_sum"] / silenced
        percentiles = histogram_quantiles(histogram, list(ENTROPY_PERCENTILES.values()))
        if percentiles is not None:
            metrics.update(zip(ENTROPY_PERCENTILES, percentiles, strict=True))
        return metrics

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
                        "completion": record["completion"],
                        "position": record["position"],
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
        """Write the model card (`stapo_trl.hub.training_card`) to `<output_dir>/README.md`: the method that was run,
        the base model, the training set's Hub id (`dataset_name`, or the trainer's), the S2T settings and the
        evaluation results stored in the output folder.

        Without a Hub repository the card is named after the output folder and its quick start loads that folder.
        """
        if not self.is_world_process_zero():
            return
        from trl.trainer.utils import get_config_model_id

        args = self.args
        model_name = model_name or (args.hub_model_id or os.path.abspath(args.output_dir)).rstrip("/").split("/")[-1]
        card = hub.training_card(
            args,
            method=self.card_method,
            model_name=model_name,
            model_id=self.hub_model_id or args.hub_model_id or args.output_dir,
            base_model=get_config_model_id(self.model.config) or None,
            dataset=hub.hub_dataset_id(dataset_name) if dataset_name else self.dataset_name,
            steps=self.state.global_step,
            tags=[tags] if isinstance(tags, str) else tags,
        )
        os.makedirs(args.output_dir, exist_ok=True)
        card.save(os.path.join(args.output_dir, "README.md"))

    def push_to_hub(self, *args, **kwargs):
        """transformers' `push_to_hub` (one save, the card, one upload of the output folder), without the files
        `stapo_trl.hub.excluded_from_upload` names."""
        with hub.uploads_without(self.args.output_dir, hub.excluded_from_upload(self.args.hub_include_run_files)):
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder):
        with hub.uploads_without(self.args.output_dir, hub.excluded_from_upload(self.args.hub_include_run_files)):
            super()._push_from_checkpoint(checkpoint_folder)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if self._loss_forward is not None:
            forward, self._loss_forward = self._loss_forward, None
            return forward
        if self._generation_policy_passes is not None and model is self.model:
            # The policy's fused head gives the entropies with the log-probs at no extra cost (a reference model's
            # head may give none): keep them, `_generate_and_score_completions` picks the old-log-prob pass's.
            logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(
                model, *args, **{**kwargs, "compute_entropy": True}
            )
            self._generation_policy_passes.append((logps, entropies))
            return logps, entropies if kwargs.get("compute_entropy") else None, aux_loss
        return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

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
