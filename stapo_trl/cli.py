"""`stapo-train`: train with STAPO or a baseline from the command line (also `train.py` and `python -m stapo_trl.cli`).

    stapo-train --config demo_cpu                                       # the CPU demo (a shipped recipe, by name)
    accelerate launch --config_file "$(stapo-trl accelerate-config zero3)" -m stapo_trl.cli --config qwen3-8b/stapo
    stapo-train --model Qwen/Qwen3-8B-Base --dry-run                    # resolved settings and checks, no download

`--help` describes STAPO's and the script's options and the shipped recipes without importing torch, transformers
or TRL (they take seconds to import); `--help-all` prints every option of TRL's parser. A run whose arguments fail a
check stops with one line, `stapo-train: error: ...`, and exit code 2 before anything is downloaded or written;
`--debug` (or `STAPO_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import typing

from .arguments import METHOD_PRESETS, STAPOArguments, STAPOScriptArguments
from .data import DatasetCheckError
from .request import check_request, read_request
from .shipped import shipped_recipes

PROG = "stapo-train"
USAGE_ERROR = 2
# TRL / transformers options most runs set; `--help-all` lists all of them.
COMMON_TRL_OPTIONS = (
    "--output_dir", "--learning_rate", "--max_steps", "--per_device_train_batch_size", "--gradient_accumulation_steps",
    "--num_generations", "--generation_batch_size", "--max_completion_length", "--temperature", "--use_vllm",
    "--vllm_mode", "--use_peft", "--lora_r", "--bf16", "--use_cpu", "--report_to", "--save_steps",
    "--resume_from_checkpoint", "--push_to_hub", "--hub_model_id", "--seed",
)  # fmt: skip


def _recipe_lines() -> list[str]:
    """One line per recipe folder of the shipped recipes: `qwen3-8b/{entropy20,grpo,justrl,stapo}`."""
    folders: dict[str, list[str]] = {}
    for recipe in shipped_recipes():
        folder, name = os.path.split(recipe)
        folders.setdefault(folder, []).append(name)
    return [
        f"  {os.path.join(folder, names[0] if len(names) == 1 else '{' + ','.join(names) + '}')}"
        for folder, names in folders.items()
    ]


def _add_fields(group, dataclass_type) -> None:
    for spec in dataclasses.fields(dataclass_type):
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        help_text = spec.metadata.get("help", "").replace("%", "%%") + f" [{default!r}]"
        group.add_argument(f"--{spec.name}", metavar="", help=help_text)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=120)


def short_help() -> str:
    """The `--help` text: methods, recipes, STAPO's and the script's options, then where the TRL options are."""
    methods = "\n".join(
        f"  {name:<10} {', '.join(f'{key}={value}' for key, value in preset.items())}"
        for name, preset in METHOD_PRESETS.items()
    )
    recipes = "\n".join(_recipe_lines())
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} (--model MODEL | --config RECIPE) [--method METHOD] [options]",
        description="Train a model with STAPO (arXiv 2602.15620) or one of the paper's baselines on math with\n"
        "verifiable rewards. Settings: method preset < recipe (--config) < command line. [defaults] in brackets.",
        epilog=(
            f"methods (--method; explicit flags override the preset):\n{methods}\n\n"
            f"shipped recipes (--config NAME, from any directory; `stapo-trl recipe NAME` prints the file):\n{recipes}\n\n"
            + textwrap.fill(
                "all TRL options: every field of TRL's GRPOConfig, transformers' TrainingArguments and TRL's "
                f"ModelConfig is a flag too, e.g. {', '.join(COMMON_TRL_OPTIONS)}.",
                110,
            )
            + f"\nRun `{PROG} --help-all` for the full list with their defaults."
        ),
        formatter_class=_Formatter,
        add_help=False,
    )
    run = parser.add_argument_group("run")
    run.add_argument("-h", "--help", action="store_true", help="Show this message and exit.")
    run.add_argument("--help-all", action="store_true", help="Show every option, TRL's included, and exit.")
    run.add_argument(
        "--config", metavar="RECIPE", help="A shipped recipe by name (listed below) or a YAML file: any option below "
        "as `key: value`."
    )  # fmt: skip
    run.add_argument("--model", metavar="MODEL", help="Model to train: a Hub id or a local path.")
    run.add_argument(
        "--dry-run", action="store_true", help="Print the resolved settings and batch arithmetic, run every check, "
        "and exit before any download."
    )  # fmt: skip
    run.add_argument("--debug", action="store_true", help="Show the traceback of an error (or set STAPO_DEBUG=1).")
    _add_fields(parser.add_argument_group("STAPO (S2T) and the paper's loss defaults"), STAPOArguments)
    _add_fields(parser.add_argument_group("recipe: data, reward, demo, W&B, in-training evaluation"), STAPOScriptArguments)
    return parser.format_help()


def one_line(error: BaseException) -> str:
    """The message of `error` on one line."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Entry point of `stapo-train` and `train.py`; exits with 0 on success and 2 on bad input.

    read and check the request (before TRL is imported) -> parse -> check -> (--dry-run: `launch.plan`, stop) -> the
    run's entry: `stapo_trl.launch.run_training`, or `stapo_trl.demo.run_demo` for the CPU demo; both run the
    launcher's stages (see `stapo_trl.launch`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_and_exit(short_help)
    debug = "--debug" in argv or os.environ.get("STAPO_DEBUG", "").lower() in ("1", "true", "yes")
    dry_run = "--dry-run" in argv or "--dry_run" in argv
    argv = [arg for arg in argv if arg not in ("--debug", "--dry-run", "--dry_run")]
    try:
        if "--help-all" in argv:
            from . import launch

            print_and_exit(lambda: launch.make_parser(prog=PROG).format_help())
        request = read_request(argv, dry_run=dry_run)
        check_request(request)
        from . import launch

        run = launch.check(launch.parse(request))
    except Exception as error:
        fail(error, debug)
    if dry_run:
        print_and_exit(lambda: launch.plan(run))
    if run.script_args.demo:
        from .demo import run_demo as entry
    else:
        entry = launch.run_training
    try:
        entry(run)
    except DatasetCheckError as error:  # a Hub dataset's rows, checked after the download, before the model loads
        fail(error, debug)


def fail(error: BaseException, debug: bool) -> typing.NoReturn:
    """Bad input: one line and exit code 2 (the traceback with --debug)."""
    if debug:
        raise error
    print(f"{PROG}: error: {one_line(error)} (--debug shows the traceback)", file=sys.stderr)
    raise SystemExit(USAGE_ERROR) from None


def print_and_exit(text) -> None:
    """Print `text()` and exit with 0, quietly when the reader has gone (`stapo-train --help-all | head`)."""
    try:
        print(text(), flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
    raise SystemExit(0)


if __name__ == "__main__":
    main()
