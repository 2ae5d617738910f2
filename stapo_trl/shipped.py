"""The training recipes and accelerate configs shipped inside the package, found by name from any directory.

    recipe_path("qwen3-8b/stapo")            # .../stapo_trl/recipes/qwen3-8b/stapo.yaml
    recipe_path("my_run.yaml")               # an existing file is used as it is
    accelerate_config_path("zero3")          # .../stapo_trl/accelerate_configs/zero3.yaml

A recipe is named by its path below `stapo_trl/recipes/` without `.yaml` (`demo_cpu`, `qwen3-14b/grpo`); the
repository's own spelling, `recipes/qwen3-8b/stapo.yaml`, names the same file. The repository's top-level
`recipes/` and `accelerate_configs/` are links to these folders, so there is one copy of each file. Nothing heavy is
imported here: `stapo-train --help` lists the names without importing torch.
"""

from __future__ import annotations

from pathlib import Path

RECIPES = Path(__file__).resolve().parent / "recipes"
ACCELERATE_CONFIGS = Path(__file__).resolve().parent / "accelerate_configs"


def _names(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).with_suffix("").as_posix() for path in folder.rglob("*.yaml"))


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes: `demo_cpu`, `qwen3-1.7b/entropy20`, ..., sorted."""
    return _names(RECIPES)


def shipped_accelerate_configs() -> list[str]:
    """The names of the shipped accelerate configs: `ddp`, `multi_node_zero3`, ..., sorted."""
    return _names(ACCELERATE_CONFIGS)


def _shipped(folder: Path, name: str, prefix: str) -> Path | None:
    name = name.removeprefix("./").removeprefix(prefix).removesuffix(".yaml")
    path = folder / f"{name}.yaml"
    return path if name and path.resolve().is_relative_to(folder) and path.is_file() else None


def recipe_path(recipe: str) -> Path:
    """The recipe file `--config` names: an existing file, else a shipped recipe by name.

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped names.
    """
    if Path(recipe).expanduser().is_file():
        return Path(recipe).expanduser()
    shipped = _shipped(RECIPES, recipe, "recipes/")
    if shipped is None:
        raise FileNotFoundError(
            f"no such recipe file {recipe!r} and no shipped recipe of that name; shipped recipes: "
            f"{', '.join(shipped_recipes())}."
        )
    return shipped


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name (`zero3`, `zero3.yaml` or `accelerate_configs/zero3.yaml`).

    Raises:
        FileNotFoundError: no such config; the message lists the shipped names.
    """
    shipped = _shipped(ACCELERATE_CONFIGS, name, "accelerate_configs/")
    if shipped is None:
        raise FileNotFoundError(
            f"no shipped accelerate config {name!r}; shipped: {', '.join(shipped_accelerate_configs())}."
        )
    return shipped
