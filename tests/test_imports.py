"""The package imports nothing heavy until a name needs it, and every public name still resolves."""

import json
import subprocess
import sys

import pytest

import stapo_trl

HEAVY = ("torch", "transformers", "trl", "datasets", "accelerate")


def _modules_after(code: str) -> set[str]:
    """Top-level module names loaded by a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_package_loads_no_heavy_library():
    loaded = _modules_after("import stapo_trl")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_probe_sees_heavy_libraries_when_a_name_needs_them():
    # Guards the test above: the probe must be able to see torch when something does import it.
    assert "torch" in _modules_after("from stapo_trl import s2t_statistics")


@pytest.mark.parametrize("name", stapo_trl.__all__)
def test_every_public_name_resolves(name):
    assert getattr(stapo_trl, name) is not None


def test_public_names_are_the_defining_objects():
    from stapo_trl import s2t, trainer

    assert stapo_trl.STAPOTrainer is trainer.STAPOTrainer
    assert stapo_trl.s2t_statistics is s2t.s2t_statistics
    assert stapo_trl.S2T_STATISTICS is s2t.S2T_STATISTICS


def test_unknown_name_is_an_attribute_error_and_submodules_still_import():
    with pytest.raises(AttributeError, match="no_such_name"):
        stapo_trl.no_such_name  # noqa: B018
    from stapo_trl import rewards  # a submodule, not a re-exported name

    assert rewards.__name__ == "stapo_trl.rewards"
