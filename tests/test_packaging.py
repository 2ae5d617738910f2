"""The package as a user installs it: the wheel carries every recipe and accelerate config, and a non-editable copy
finds them by name from a directory outside the clone.

The wheel is built from this checkout (`pip wheel --no-build-isolation`, offline) and unpacked with
`pip install --no-deps --target` into a temporary folder that comes first on `PYTHONPATH`; each command then runs as a
subprocess whose working directory is another temporary folder, so neither the clone nor its editable install can
answer for the wheel.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from stapo_trl.shipped import (
    ACCELERATE_CONFIGS,
    RECIPES,
    accelerate_config_path,
    recipe_path,
    shipped_accelerate_configs,
    shipped_recipes,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(folder), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (path,) = folder.glob("stapo_trl-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip installs it (no dependencies: they are this interpreter's)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return target


def run_installed(installed: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_holds_every_recipe_and_accelerate_config_and_both_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        path.relative_to(ROOT).as_posix()
        for folder in (RECIPES, ACCELERATE_CONFIGS)
        for path in folder.rglob("*")
        if path.is_file()
    }
    assert shipped and shipped <= names, sorted(shipped - names)
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "stapo-train = stapo_trl.cli:main" in scripts and "stapo-trl = stapo_trl.commands:main" in scripts


def test_the_repository_links_are_the_package_folders():
    """One copy of each file: the top-level folders the docs name are links into the package."""
    assert (ROOT / "recipes").is_symlink() and (ROOT / "recipes").resolve() == RECIPES
    assert (ROOT / "accelerate_configs").is_symlink() and (ROOT / "accelerate_configs").resolve() == ACCELERATE_CONFIGS


def test_names_resolve_in_every_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = RECIPES / "qwen3-8b" / "stapo.yaml"
    for spelling in ("qwen3-8b/stapo", "qwen3-8b/stapo.yaml", "recipes/qwen3-8b/stapo.yaml"):
        assert recipe_path(spelling) == expected
    own = tmp_path / "qwen3-8b" / "stapo.yaml"  # a file of the user's wins over the shipped one of the same name
    own.parent.mkdir()
    own.write_text("model_name_or_path: me/model\n")
    assert recipe_path("qwen3-8b/stapo.yaml") == Path("qwen3-8b/stapo.yaml")
    assert recipe_path("qwen3-8b/stapo") == expected
    for spelling in ("zero3", "zero3.yaml", "accelerate_configs/zero3.yaml"):
        assert accelerate_config_path(spelling) == ACCELERATE_CONFIGS / "zero3.yaml"
    assert "demo_cpu" in shipped_recipes() and len(shipped_recipes()) == 13
    assert shipped_accelerate_configs() == ["ddp", "multi_node_zero3", "single_gpu", "zero2", "zero3", "zero3_offload"]


@pytest.mark.parametrize("name", ["qwen3-8b/nope", "../pyproject", ""])
def test_an_unknown_name_lists_the_shipped_ones(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no shipped recipe of that name; shipped recipes: demo_cpu, "):
        recipe_path(name)


def test_stapo_trl_prints_shipped_paths_from_the_installed_wheel(installed, tmp_path):
    completed = run_installed(
        installed,
        "import stapo_trl, sys; from stapo_trl.commands import main; print(stapo_trl.__file__); "
        "main(['accelerate-config', 'zero3']); main(['recipe', 'qwen3-8b/stapo'])",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    module, config, recipe = completed.stdout.splitlines()
    assert Path(module).is_relative_to(installed)
    assert Path(config) == installed / "stapo_trl" / "accelerate_configs" / "zero3.yaml" and Path(config).is_file()
    assert Path(recipe) == installed / "stapo_trl" / "recipes" / "qwen3-8b" / "stapo.yaml" and Path(recipe).is_file()


def test_stapo_trl_env_names_versions_precision_and_extras(installed, tmp_path):
    completed = run_installed(installed, "from stapo_trl.commands import main; main(['env'])", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = dict(line[2:].split(": ", 1) for line in completed.stdout.splitlines())
    from importlib.metadata import version

    assert lines["transformers"] == version("transformers") and lines["trl"] == version("trl")
    assert lines["GPUs"] == "none (CPU only)" and lines["default precision"] == "fp32"
    assert lines["stapo-trl"] == "0.1.0"
    assert "dev" in lines["installed extras"].split(", ")


def test_unknown_accelerate_config_is_one_line_and_exit_code_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "stapo_trl.commands", "accelerate-config", "zero4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 2
    assert completed.stderr == (
        "stapo-trl: error: no shipped accelerate config 'zero4'; shipped: ddp, multi_node_zero3, single_gpu, zero2, "
        "zero3, zero3_offload.\n"
    )


def test_stapo_train_takes_a_shipped_recipe_by_name_and_a_file_by_path_from_outside_the_clone(installed, tmp_path):
    """`--config qwen3-8b/stapo` reads the wheel's copy; `--config some/dir/run.yaml` reads the user's file."""
    own = tmp_path / "configs" / "run.yaml"
    own.parent.mkdir()
    own.write_text("model_name_or_path: me/my-model\nmethod: justrl\n")
    on_cpu = "'--use_cpu', 'true', '--use_vllm', 'false', '--bf16', 'false', '--report_to', 'none'"
    for config, expected in (("qwen3-8b/stapo", "Qwen/Qwen3-8B-Base"), ("configs/run.yaml", "me/my-model")):
        completed = run_installed(
            installed,
            f"from stapo_trl.cli import main; main(['--config', {config!r}, '--dry-run', {on_cpu}])",
            tmp_path,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert f"model               {expected}\n" in completed.stdout
        assert completed.stdout.endswith("All checks passed; nothing was downloaded or written (--dry-run).\n")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["configs", "run.yaml"]  # nothing written
