"""Publishing to the Hugging Face Hub: what a run uploads, the model card, evaluation results and Hub checkpoints.

- What goes up: `push_to_hub` uploads the model, its tokenizer and configs, the card and `training_config.yaml` (the
  resolved settings, rerun with `stapo-train --config training_config.yaml`); checkpoints follow `hub_strategy`.
  The run's own records stay local (`RUN_FILE_PATTERNS`: W&B's run folder, `spurious_tokens.jsonl`, evaluation
  generations) unless `hub_include_run_files=True`; transformers' pickled `training_args.bin` never goes up.
- The card (`training_card`) names the method that was run (`METHODS`), the base model, the Hub dataset, the
  versions, the S2T settings and the evaluation results; its metadata is built with `huggingface_hub`'s
  `ModelCardData`, and evaluation results become `model-index` entries (`EvalResult`).
- `stapo-eval` adds its results to a card (`add_eval_results`) and, with `--push_to_hub`, replaces only the
  README.md of the Hub repository (`push_card`).
- `--resume_from_checkpoint hf://owner/name[@revision][/folder]` resumes from a checkpoint that a run with
  `hub_strategy="checkpoint"` (folder `last-checkpoint`, the default) or `"all_checkpoints"` (`checkpoint-N`) pushed.
"""

from __future__ import annotations

import contextlib
import os
import re
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .evaluation.protocol import BENCHMARK_ORDER, EVAL_SAMPLES_FILE, display_name

TRAINING_CONFIG_FILE = "training_config.yaml"
# Written by the run for its own use: W&B's run folder (host, user, command line, logs; W&B writes it to
# `$WANDB_DIR/wandb`, and stapo-train sets WANDB_DIR to the output folder), the silenced tokens with their prompt and
# completion text, and the evaluation generations of `stapo-eval --model <output_dir>`.
RUN_FILE_PATTERNS = ("wandb/*", "spurious_tokens.jsonl", EVAL_SAMPLES_FILE, f"*/{EVAL_SAMPLES_FILE}")
# transformers' pickle of the arguments: `training_config.yaml` holds the same settings in a form one can rerun.
NEVER_UPLOADED = ("training_args.bin",)
# The folder of a Hub checkpoint that `hub_strategy="checkpoint"` pushes (transformers' name).
HUB_LAST_CHECKPOINT = "last-checkpoint"
HUB_CHECKPOINT_PREFIX = "hf://"


@dataclass(frozen=True)
class Method:
    """What a model card says about a training method."""

    name: str
    summary: str
    tags: tuple[str, ...] = ()
    paper_title: str | None = None
    paper_id: str | None = None
    citation: str | None = None


METHODS = {
    "stapo": Method(
        name="STAPO",
        summary="a DAPO-style group objective in which the gradient of rare spurious tokens (positive advantage, low "
        "probability, low entropy) is silenced (S2T) and the loss is renormalised over the tokens that remain",
        tags=("stapo",),
        paper_title="STAPO: Stabilizing Reinforcement Learning for LLMs by Silencing Rare Spurious Tokens",
        paper_id="2602.15620",
        # docstyle-ignore
        citation=textwrap.dedent("""\
            @article{liu2026stapo,
                title        = {{STAPO: Stabilizing Reinforcement Learning for LLMs by Silencing Rare Spurious Tokens}},
                author       = {Shiqi Liu and Zeyu He and Guojian Zhan and Letian Tao and Zhilong Zheng and Jiang Wu and Yinuo Wang and Yang Guan and Kehua Sheng and Bo Zhang and Keqiang Li and Jingliang Duan and Shengbo Eben Li},
                year         = 2026,
                eprint       = {arXiv:2602.15620},
            }"""),
    ),
    "justrl": Method(
        name="JustRL",
        summary="the STAPO paper's JustRL baseline, a DAPO-style token-mean objective with clip-higher and no KL term, "
        "with nothing silenced",
        tags=("justrl",),
        paper_title="JustRL: Scaling a 1.5B LLM with a Simple RL Recipe",
        paper_id="2512.16649",
    ),
    "entropy20": Method(
        name="20-Entropy",
        summary="the STAPO paper's 20-Entropy baseline, with the policy gradient only on the 20% highest-entropy "
        "tokens, renormalised over them",
        tags=("entropy20",),
        paper_title="Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective Reinforcement Learning for "
        "LLM Reasoning",
        paper_id="2506.01939",
    ),
    "grpo": Method(
        name="GRPO",
        summary="GRPO as in DeepSeekMath: per-sequence mean loss, symmetric clip and a KL term to the reference model",
    ),
}


def method_of(args) -> str:
    """The method a configuration runs, for a card whose run did not name one (`METHODS`' keys).

    `stapo-train --method` presets map back to their own name: S2T on is STAPO; S2T off with an entropy mask is
    20-Entropy; S2T off with the DAPO token mean and no KL term is JustRL; anything else is TRL's GRPO.
    """
    if args.silence_spurious_tokens:
        return "stapo"
    if args.top_entropy_quantile < 1.0:
        return "entropy20"
    if args.loss_type == "dapo" and args.beta == 0.0:
        return "justrl"
    return "grpo"


def method_info(method: str) -> Method:
    """What the card says about `method` (a key of `METHODS`); GRPO's paper and citation are TRL's own."""
    info = METHODS[method]
    if method == "grpo":
        from trl import GRPOTrainer

        paper = GRPOTrainer._paper
        return Method(info.name, info.summary, info.tags, paper["title"], paper["id"], paper["citation"])
    return info


# ----------------------------------------------------------------------------------------------------------------
# What goes up
# ----------------------------------------------------------------------------------------------------------------


def excluded_from_upload(include_run_files: bool) -> list[str]:
    """The `ignore_patterns` added to transformers' own (`_*`, `checkpoint-*`) when the output folder is uploaded."""
    return [*NEVER_UPLOADED, *(() if include_run_files else RUN_FILE_PATTERNS)]


class _UploadsWithout:
    """`HfApi` with `ignore_patterns` added to every upload of one folder; everything else passes through."""

    def __init__(self, api, folder: str, patterns: list[str]):
        self._api, self._folder, self._patterns = api, os.path.abspath(folder), patterns

    def upload_folder(self, *, folder_path, ignore_patterns=None, **kwargs):
        if os.path.abspath(folder_path) == self._folder:
            ignore_patterns = [*([ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or [])]
            ignore_patterns += self._patterns
        return self._api.upload_folder(folder_path=folder_path, ignore_patterns=ignore_patterns, **kwargs)

    def __getattr__(self, name):
        return getattr(self._api, name)


@contextlib.contextmanager
def uploads_without(folder: str, patterns: list[str]):
    """While active, the Trainer's uploads of `folder` also leave out `patterns`.

    transformers (5.25, the tested version) uploads the output folder from `Trainer.push_to_hub` and
    `_push_from_checkpoint` through `transformers.trainer.hf_api().upload_folder(..., ignore_patterns=["_*",
    "checkpoint-*"])`, with no setting for more patterns; this wraps that one call instead of copying both methods.
    """
    import transformers.trainer as trainer_module

    shared = trainer_module.hf_api
    trainer_module.hf_api = lambda: _UploadsWithout(shared(), folder, patterns)
    try:
        yield
    finally:
        trainer_module.hf_api = shared


def training_config(script_args, args, model_args) -> dict[str, Any]:
    """The resolved settings of a `stapo-train` run as a recipe: `stapo-train --config` of it runs the same settings.

    Every field of the script's, STAPO/TRL's and the model's arguments, except secrets (`*_token`), the checkpoint to
    resume from and the fields TRL derives from others (`steps_per_generation` from `generation_batch_size`).
    """
    import dataclasses

    values = {}
    for arguments in (script_args, model_args):
        values.update({field.name: getattr(arguments, field.name) for field in dataclasses.fields(arguments)})
    values.update(args.to_dict())  # enums as their values
    derived = {field.name for field in dataclasses.fields(args) if not field.init}
    # `model_init_kwargs` is set by the launcher from the model's arguments.
    derived |= {"resume_from_checkpoint", "steps_per_generation", "model_init_kwargs"}
    return {
        name: value
        for name, value in values.items()
        if name not in derived and not name.endswith("_token") and not name.startswith("_")
    }


def write_training_config(path: str | os.PathLike, config: dict[str, Any]) -> None:
    import yaml

    header = "# The resolved settings of this run. Run them again with: stapo-train --config training_config.yaml\n"
    Path(path).write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------


def hub_dataset_id(dataset_name: str | None, dataset_path: str | None = None) -> str | None:
    """The Hub id of a training set named as `stapo-train` takes it (registry key, Hub id or local path, and the
    `dataset_path` override), or `None` for local data."""
    from .data import looks_like_local_path, resolve_training_spec

    if not dataset_name:
        return None
    try:
        path = resolve_training_spec(dataset_name, path=dataset_path).path
    except (ValueError, FileNotFoundError):
        return None
    if looks_like_local_path(path) or os.path.exists(os.path.expanduser(path)):
        return None
    return path


_CARD_TEMPLATE = """\
---
{{ card_data }}
---

# Model Card for {{ model_name }}

This model is {{ base_model_text }}, trained on {{ dataset_text }} with {{ method.name }}{% if method.paper_id %} \
([{{ method.paper_title }}](https://huggingface.co/papers/{{ method.paper_id }})){% endif %}: {{ method.summary }}.
It was trained with stapo-trl {{ stapo_version }} on [TRL](https://github.com/huggingface/trl) {{ trl_version }}.

## Quick start

```python
from transformers import pipeline

generator = pipeline("text-generation", model="{{ model_id }}", device_map="auto")
question = "What is 17 * 23? Please reason step by step, and put your final answer within \\\\boxed{}."
output = generator([{"role": "user", "content": question}], max_new_tokens=1024, return_full_text=False)[0]
print(output["generated_text"])
```

## Training procedure
{% if wandb_url %}
[<img src="https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg" \
alt="Visualize in Weights & Biases" width="150" height="24"/>]({{ wandb_url }})
{% endif %}
| setting | value |
|---|---|
{% for name, value in settings %}| {{ name }} | {{ value }} |
{% endfor %}
{% if has_training_config %}The resolved settings of the run are in `training_config.yaml` (run them again with \
`stapo-train --config training_config.yaml`).{% endif %}

## Evaluation

{{ evaluation }}

## Framework versions

{% for name, value in versions %}- {{ name }}: {{ value }}
{% endfor %}{% if method.citation %}
## Citation

Cite {{ method.name }} as:

```bibtex
{{ method.citation }}
```
{% endif %}"""


def _settings_table(args, steps: int) -> list[tuple[str, Any]]:
    tau_h = (
        f"{args.spurious_entropy_threshold} nats (absolute)"
        if args.spurious_entropy_threshold is not None
        else f"{args.spurious_entropy_quantile}-quantile of the candidates' entropies"
    )
    return [
        ("S2T (silence spurious tokens)", "on" if args.silence_spurious_tokens else "off"),
        ("tau_p (probability threshold)", args.spurious_prob_threshold),
        ("tau_h (entropy threshold)", tau_h),
        ("scope of tau_h and of the denominator", args.spurious_stats_scope),
        ("loss_type", args.loss_type),
        ("clip range (epsilon, epsilon_high)", f"{args.epsilon}, {args.epsilon_high}"),
        ("beta (KL)", args.beta),
        ("top_entropy_quantile", args.top_entropy_quantile),
        ("learning_rate", args.learning_rate),
        ("num_generations", args.num_generations),
        ("max_completion_length", args.max_completion_length),
        ("temperature", args.temperature),
        ("optimizer steps", steps),
    ]


def _versions() -> list[tuple[str, str]]:
    from . import __version__

    return [("stapo-trl", __version__)] + [
        (name, version(package))
        for name, package in (
            ("TRL", "trl"),
            ("Transformers", "transformers"),
            ("PyTorch", "torch"),
            ("Datasets", "datasets"),
            ("Tokenizers", "tokenizers"),
        )
    ]


def _wandb_url() -> str | None:
    """The W&B run's page when the run logs online (an offline run has none until it is synced)."""
    try:
        import wandb
    except ImportError:
        return None
    run = wandb.run
    if run is None or getattr(run, "offline", False) or getattr(run.settings, "mode", None) in ("offline", "disabled"):
        return None
    return run.url


def training_card(
    args,
    *,
    method: str,
    model_name: str,
    model_id: str,
    base_model: str | None,
    dataset: str | None,
    steps: int,
    tags: list[str] | None = None,
):
    """The model card of a training run (a `huggingface_hub.ModelCard`), with the evaluation results found in
    `args.output_dir` (see `eval_results_in`).

    Args:
        method: a key of `METHODS`.
        model_name: the card's title and `model_name` (needed by `model-index`).
        model_id: what the quick start loads (the Hub repository, or the output folder).
        base_model: the Hub id of the model trained from, or a local path (named, not linked).
        dataset: the Hub id of the training set, or `None` for a local one.
        steps: the optimizer steps trained so far.
    """
    from huggingface_hub import ModelCard, ModelCardData

    info = method_info(method)
    base_is_hub = bool(base_model) and not os.path.isdir(base_model)
    eval_results = merge_eval_results([], eval_results_in(args.output_dir))
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model if base_is_hub else None,
        datasets=[dataset] if dataset else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["trl", "grpo", *info.tags, "stapo-trl", *(tags or [])])),
        eval_results=eval_results or None,
    )
    if base_is_hub:
        base_model_text = f"a fine-tuned version of [{base_model}](https://huggingface.co/{base_model})"
    elif base_model:
        base_model_text = f"a fine-tuned version of a local model (`{Path(base_model).name}`)"
    else:
        base_model_text = "a fine-tuned model"
    return ModelCard.from_template(
        card_data,
        template_str=_CARD_TEMPLATE,
        model_name=model_name,
        model_id=model_id,
        method=info,
        base_model_text=base_model_text,
        dataset_text=f"[{dataset}](https://huggingface.co/datasets/{dataset})" if dataset else "a local dataset",
        stapo_version=_versions()[0][1],
        trl_version=version("trl"),
        wandb_url=_wandb_url(),
        settings=_settings_table(args, steps),
        has_training_config=os.path.isfile(os.path.join(args.output_dir, TRAINING_CONFIG_FILE)),
        evaluation=evaluation_markdown(eval_results),
        versions=_versions(),
    )


# ----------------------------------------------------------------------------------------------------------------
# Evaluation results as Hub metadata
# ----------------------------------------------------------------------------------------------------------------


def eval_results_in(folder: str | os.PathLike) -> list:
    """`EvalResult`s of every evaluation stored under a training output folder (`stapo-eval --model <folder>` and the
    in-training evaluation), in the order of `stapo_trl.evaluation.report.stored_results`."""
    from .evaluation.report import stored_results

    return [result for _, document in stored_results(folder) for result in eval_results_from(document)]


def eval_results_from(results: dict[str, Any]) -> list:
    """One `huggingface_hub.EvalResult` per benchmark of a `stapo-eval` results document (`eval_results.json`).

    The metric is `avg@N` in percent; `metric_config` is the decoding (`training`, `justrl`, or the temperature and
    top-p), and `metric_args` holds what else decides the number (samples, token budget, problems when a subset).
    """
    from huggingface_hub import EvalResult

    from .data import looks_like_local_path

    settings = results.get("settings", {})
    decoding = settings.get("decoding") or f"temperature {settings.get('temperature')}, top-p {settings.get('top_p')}"
    evaluated_at = results.get("evaluated_at_step")
    entries = []
    for name, scores in results["benchmarks"].items():
        spec = scores.get("dataset") or {}
        path = spec.get("path")
        on_hub = bool(path) and not looks_like_local_path(path) and not os.path.exists(os.path.expanduser(path))
        n = int(scores["n"])
        arguments = {
            "n": n,
            "temperature": settings.get("temperature"),
            "top_p": settings.get("top_p"),
            "max_new_tokens": settings.get("max_new_tokens"),
            "problems": scores.get("num_problems"),
        }
        if evaluated_at is not None:
            arguments["training_step"] = evaluated_at
        entries.append(
            EvalResult(
                task_type="text-generation",
                task_name="Math reasoning",
                dataset_type=path if on_hub else name,
                dataset_name=display_name(name) if on_hub else f"{display_name(name)} (local copy)",
                dataset_config=spec.get("config") if on_hub else None,
                dataset_split=spec.get("split") if on_hub else None,
                metric_type=f"avg@{n}",
                metric_name=f"avg@{n} ({decoding})",
                metric_config=decoding,
                metric_value=round(float(scores["accuracy"]), 2),
                metric_args=arguments,
            )
        )
    return entries


def _result_key(result) -> tuple:
    return (result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type, result.metric_config)


def merge_eval_results(existing: list, new: list) -> list:
    """`existing` with each result of `new` added, replacing one for the same benchmark, metric and decoding."""
    merged = {_result_key(result): result for result in existing}
    merged.update({_result_key(result): result for result in new})
    order = {name: index for index, name in enumerate(BENCHMARK_ORDER)}

    def position(result):
        benchmark = next((name for name in BENCHMARK_ORDER if display_name(name) in result.dataset_name), None)
        return (order.get(benchmark, len(order)), result.metric_config or "", result.metric_type)

    return sorted(merged.values(), key=position)


def evaluation_markdown(eval_results: list) -> str:
    """The card's evaluation table, from its `model-index` entries (so the text and the metadata agree)."""
    if not eval_results:
        return "No evaluation results yet: `stapo-eval --model <this model>` adds them here and to the metadata."
    rows = ["| benchmark | metric | decoding | score (%) | settings |", "|---|---|---|---:|---|"]
    for result in eval_results:
        arguments = result.metric_args or {}
        details = ", ".join(f"{key} {value}" for key, value in arguments.items() if key != "n" and value is not None)
        rows.append(
            f"| {result.dataset_name} | {result.metric_type} | {result.metric_config} | {result.metric_value:.2f} | "
            f"{details} |"
        )
    note = "avg@n: the mean accuracy (%) over n samples per problem, graded by stapo-trl's boxed-answer grader."
    return "\n".join(rows) + "\n\n" + note


_EVALUATION_SECTION = re.compile(r"^## Evaluation\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)


def add_eval_results(card, results: list[dict[str, Any]], model_name: str):
    """`card` (a `ModelCard`) with the results documents added to its `model-index` and its Evaluation section."""
    merged = merge_eval_results(card.data.eval_results or [], [r for doc in results for r in eval_results_from(doc)])
    card.data.eval_results = merged
    card.data.model_name = card.data.model_name or model_name
    section = f"## Evaluation\n\n{evaluation_markdown(merged)}\n\n"
    if _EVALUATION_SECTION.search(card.text):
        card.text = _EVALUATION_SECTION.sub(lambda _: section, card.text, count=1)
    else:
        card.text = card.text.rstrip("\n") + "\n\n" + section
    return card


def check_card_repo(repo_id: str, *, revision: str | None = None, token: str | None = None) -> None:
    """Before an evaluation whose results go to a Hub repository's card: a write token and an existing repository."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    hub_preflight(repo_id, token)
    try:
        HfApi(token=token).list_repo_files(repo_id, revision=revision)
    except (HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(
            f"hub_model_id: cannot read the Hub repository {repo_id!r}{f' at {revision!r}' if revision else ''} whose "
            f"card would get the results (push the model first): {error}"
        ) from error


def load_card(repo_id: str, *, revision: str | None = None, token: str | None = None):
    """The `ModelCard` of a Hub model repository (an empty one when it has no README.md yet)."""
    from huggingface_hub import HfApi, ModelCard

    api = HfApi(token=token)
    if "README.md" not in api.list_repo_files(repo_id, revision=revision):
        return ModelCard("")
    return ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=revision))


def push_card(card, repo_id: str, *, revision: str | None = None, token: str | None = None, message: str) -> str:
    """Replace the README.md of a Hub repository by `card`, in a commit that touches no other file."""
    from huggingface_hub import HfApi

    return HfApi(token=token).upload_file(
        path_or_fileobj=str(card).encode("utf-8"),
        path_in_repo="README.md",
        repo_id=repo_id,
        revision=revision,
        commit_message=message,
    )


def hub_preflight(hub_model_id: str | None, token: str | None = None) -> None:
    """Before any download: a token with write access is available and the Hub answers."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if not hub_model_id:
        raise ValueError("push_to_hub is set but hub_model_id is not: pass --hub_model_id <user-or-org>/<name>.")
    if HF_HUB_OFFLINE:
        raise ConnectionError("push_to_hub is set but HF_HUB_OFFLINE=1: the Hub cannot be reached. Unset it.")
    token = token or get_token()
    if token is None:
        raise PermissionError("push_to_hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN.")
    try:
        identity = HfApi().whoami(token=token)
    except Exception as error:  # network errors and auth errors alike stop the run before any work
        message = f"push_to_hub: the Hub did not accept the token or could not be reached: {error}"
        raise ConnectionError(message) from error
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise PermissionError("push_to_hub: the Hugging Face token is read-only; create one with write access.")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints on the Hub
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubCheckpoint:
    """`hf://owner/name[@revision][/folder]`: a checkpoint folder in a Hub model repository."""

    repo_id: str
    revision: str | None
    folder: str

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        return f"{HUB_CHECKPOINT_PREFIX}{self.repo_id}{revision}/{self.folder}"


def is_hub_checkpoint(value: str) -> bool:
    return str(value).startswith(HUB_CHECKPOINT_PREFIX)


def parse_hub_checkpoint(value: str) -> HubCheckpoint:
    """`hf://owner/name[@revision][/folder]`; the folder defaults to `last-checkpoint`."""
    match = re.fullmatch(r"hf://([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.+?))?/?", str(value))
    if match is None:
        raise ValueError(
            f"resume_from_checkpoint: {value!r} is not a Hub checkpoint; accepted: hf://owner/name, "
            "hf://owner/name@revision, hf://owner/name[@revision]/checkpoint-N (or a local folder)."
        )
    repo_id, revision, folder = match.groups()
    return HubCheckpoint(repo_id, revision, folder or HUB_LAST_CHECKPOINT)


def check_hub_checkpoint(value: str, token: str | None = None) -> HubCheckpoint:
    """The Hub checkpoint `value` names, checked to exist with a trainer state and weights (nothing is downloaded)."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.errors import HfHubHTTPError

    checkpoint = parse_hub_checkpoint(value)
    if HF_HUB_OFFLINE:
        raise ConnectionError(f"resume_from_checkpoint={value!r} is on the Hub but HF_HUB_OFFLINE=1. Unset it.")
    try:
        files = HfApi(token=token).list_repo_files(checkpoint.repo_id, revision=checkpoint.revision)
    except (HfHubHTTPError, OSError) as error:
        raise FileNotFoundError(f"resume_from_checkpoint: cannot read {checkpoint}: {error}") from error
    inside = {path[len(checkpoint.folder) + 1 :] for path in files if path.startswith(checkpoint.folder + "/")}
    if not inside:
        folders = sorted({path.split("/")[0] for path in files if "/" in path and "checkpoint" in path.split("/")[0]})
        found = f"checkpoint folders there: {', '.join(folders)}" if folders else "it has no checkpoint folder"
        raise FileNotFoundError(
            f"resume_from_checkpoint: {checkpoint} does not exist ({found}; a run pushes them with "
            "--hub_strategy checkpoint or all_checkpoints)."
        )
    if "trainer_state.json" not in inside or not any(
        name.endswith(".safetensors") or name.startswith("global_step") for name in inside
    ):
        raise FileNotFoundError(
            f"resume_from_checkpoint: {checkpoint} is incomplete (it needs trainer_state.json and the weights)."
        )
    return checkpoint


def download_checkpoint(checkpoint: HubCheckpoint, token: str | None = None) -> str:
    """Download a Hub checkpoint folder (into the Hugging Face cache) and return its local path."""
    from huggingface_hub import HfApi

    snapshot = HfApi(token=token).snapshot_download(
        checkpoint.repo_id, revision=checkpoint.revision, allow_patterns=[f"{checkpoint.folder}/*"]
    )
    return os.path.join(snapshot, checkpoint.folder)
