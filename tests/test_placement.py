"""device and dtype as users type them: names checked before anything loads, one sentence
naming the bad value, the accepted ones and the nearest; `auto` works on a CPU machine."""

from __future__ import annotations

import pytest
import torch

import xattr
from xattr.models.placement import PlacementError, check_device, torch_dtype


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("float32", torch.float32), ("bf16", torch.bfloat16), ("torch.float16", torch.float16)],
)
def test_dtype_names_and_aliases(name, dtype):
    assert torch_dtype(name) is dtype and torch_dtype(dtype) is dtype


def test_an_unknown_dtype_names_the_nearest():
    with pytest.raises(PlacementError) as caught:
        torch_dtype("fp33")
    assert str(caught.value).startswith("unknown dtype 'fp33': expected one of float32, ")
    assert "did you mean 'fp32'?" in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_on_a_machine_without_one_is_one_sentence(device):
    with pytest.raises(PlacementError, match=rf"device '{device}': this torch .* sees no CUDA GPU"):
        check_device(device)


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu0"])
def test_an_unknown_device_lists_the_accepted_ones(device):
    with pytest.raises(PlacementError, match=rf"unknown device '{device}': expected auto "):
        check_device(device)


def test_auto_and_cpu_pass():
    assert check_device("auto") == "auto" and check_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_load_refuses_before_reading_weights(tiny_model_dir, monkeypatch):
    """The checks run before from_pretrained: a bad device never costs a model load."""
    from transformers import PreTrainedModel

    def no_load(*args, **kwargs):
        raise AssertionError("weights were read")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_load))
    folder = tiny_model_dir("llava")
    with pytest.raises(PlacementError, match="sees no CUDA GPU"):
        xattr.models.load(folder, device="cuda")
    with pytest.raises(PlacementError, match="unknown dtype 'fp33'"):
        xattr.models.load(folder, dtype="fp33")
