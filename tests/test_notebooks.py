"""The notebooks in `notebooks/`: committed without outputs, and each runs end to end headless, offline, on CPU.

Each notebook is executed with nbclient in a kernel started from this interpreter (a kernelspec written to a temporary
folder, so no globally registered kernel is needed), with `STAPO_NOTEBOOK_MODE=offline` (the tiny local model and
fixture data), `HF_HUB_OFFLINE=1`, and `STAPO_NOTEBOOK_OUTPUT_DIR` pointing to a temporary folder where the figures
land.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_spurious_token_explorer.ipynb", "02_train_stapo_colab.ipynb", "03_compare_runs.ipynb")
COLAB_URL = "https://colab.research.google.com/github/stapo-trl/stapo-trl/blob/main/notebooks/{}"
KERNEL_NAME = "stapo-notebook-test"
CELL_TIMEOUT_S = 300


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    notebook = _read(name)
    nbformat.validate(notebook)
    assert "widgets" not in notebook.metadata, "widget state must be stripped"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"
        assert "widgets" not in cell.metadata
        assert "execution" not in cell.metadata


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_colab_badge_and_guarded_install(name):
    notebook = _read(name)
    assert COLAB_URL.format(name) in notebook.cells[0].source
    install = notebook.cells[1].source
    assert install == _read(NAMES[1]).cells[1].source, "one install cell for all notebooks"
    assert install.count('STAPO_TRL_SOURCE = ""') == 1 and '"-c", str(pinned)' in install  # one source, the tested set
    assert 'find_spec("stapo_trl") is None' in install and "STAPO_NOTEBOOK_MODE" in install
    assert "Restart session" in install
    assert notebook.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """Environment of the kernels: offline mode, this interpreter's ipykernel, figures in a temporary folder."""
    kernels = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL_NAME
    kernels.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "stapo-trl test kernel",
        "language": "python",
    }
    (kernels / "kernel.json").write_text(json.dumps(spec))
    env = {
        "JUPYTER_PATH": str(kernels.parent.parent),
        "STAPO_NOTEBOOK_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield tmp_path_factory.mktemp("notebook_outputs")
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _execute(name, output_dir):
    from nbclient import NotebookClient

    os.environ["STAPO_NOTEBOOK_OUTPUT_DIR"] = str(output_dir)
    notebook = _read(name)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return notebook


def _texts(notebook):
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append(output["text"])
            texts.extend(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))
    return "\n".join(texts)


def _assert_pngs(folder, names):
    for name in names:
        path = folder / name
        assert path.is_file() and path.stat().st_size > 5_000, f"missing or empty figure {path}"


def test_spurious_token_explorer_runs_offline(offline_env):
    output_dir = offline_env / "01"
    notebook = _execute(NAMES[0], output_dir)
    _assert_pngs(output_dir, ("prob_entropy.png", "gradient_proxy.png", "silenced_sweep.png"))
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["mode"] == "offline"
    assert summary["silenced"] > 0 and summary["candidates"] >= summary["silenced"]
    assert summary["tau_p"] == 0.3 and summary["q"] == 0.75
    page = (output_dir / "completions.html").read_text()
    assert "silenced:" in page  # a highlighted token
    assert "image/png" in json.dumps([c.get("outputs", []) for c in notebook.cells])


def test_train_notebook_runs_offline(offline_env):
    output_dir = offline_env / "02"
    notebook = _execute(NAMES[1], output_dir)
    _assert_pngs(output_dir, ("training_curves.png", "eval_before_after.png"))
    for label in ("before", "after"):
        results = json.loads((output_dir / "eval" / label / "eval_results.json").read_text())
        assert results["benchmarks"]["demo_addition"]["num_problems"] > 0
    run = output_dir / "run"
    assert "| S2T (silence spurious tokens) | on |" in (run / "README.md").read_text()
    assert "avg@4" in _texts(notebook)


def test_compare_notebook_runs_offline(offline_env):
    output_dir = offline_env / "03"
    notebook = _execute(NAMES[2], output_dir)
    _assert_pngs(output_dir, ("compare_curves.png", "compare_diagnostics.png", "compare_eval.png"))
    text = _texts(notebook)
    for label in ("STAPO", "GRPO", "JustRL", "20-Entropy"):
        assert label in text
