"""STAPOConfig's machine-dependent defaults: the precision a GPU runs natively, and no deprecation warning of our own.

The GPUs are mocked at the level `torch.cuda.is_bf16_supported` reads them (device properties and its emulation
probe), so the check is the one a T4 on Colab meets.
"""

import types
import warnings

import pytest
import torch

from stapo_trl import STAPOConfig
from stapo_trl.config import hardware_precision


def _mock_gpu(monkeypatch, major: int, minor: int, emulated_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(major=major, minor=minor))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: emulated_bf16)
    monkeypatch.setattr(torch.version, "hip", None)


def test_t4_gets_fp16_although_torch_reports_bf16_through_emulation(monkeypatch):
    _mock_gpu(monkeypatch, 7, 5, emulated_bf16=True)  # a T4 (Turing), as on a free Colab runtime
    assert torch.cuda.is_bf16_supported()  # the trap: True through emulation
    assert hardware_precision() == "fp16"
    assert hardware_precision(use_cpu=True) == "fp32"


def test_v100_without_bf16_tensors_gets_fp16(monkeypatch):
    _mock_gpu(monkeypatch, 7, 0, emulated_bf16=False)
    assert hardware_precision() == "fp16"


@pytest.mark.parametrize(("major", "minor"), [(8, 0), (8, 9), (9, 0)])  # A100, L4, H100
def test_ampere_and_newer_get_bf16(monkeypatch, major, minor):
    _mock_gpu(monkeypatch, major, minor, emulated_bf16=True)
    assert hardware_precision() == "bf16"


def test_cpu_gets_fp32_and_the_config_follows(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware_precision() == "fp32"
    config = STAPOConfig(output_dir=str(tmp_path), report_to=[])
    assert (config.bf16, config.fp16) == (False, False)


def test_config_picks_the_precision_hardware_precision_names(monkeypatch, tmp_path):
    """The mapping from the name to the two flags, with the GPU check of transformers left out (no GPU here)."""
    monkeypatch.setattr("stapo_trl.config.hardware_precision", lambda use_cpu=False: "fp16")
    monkeypatch.setattr("transformers.training_args.TrainingArguments.__post_init__", lambda self: None)
    config = STAPOConfig(output_dir=str(tmp_path), report_to=[])
    assert (config.bf16, config.fp16) == (False, True)
    explicit = STAPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False)
    assert (explicit.bf16, explicit.fp16) == (False, False)


def test_default_config_raises_no_deprecation_warning(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = STAPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert [str(warning.message) for warning in caught] == []
    assert config.activation_checkpointing is True and config.gradient_checkpointing is True  # TRL's default


def test_explicit_gradient_checkpointing_false_is_kept(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the user's own use of the old name
        config = STAPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gradient_checkpointing=False)
    assert config.activation_checkpointing is False and config.gradient_checkpointing is False
