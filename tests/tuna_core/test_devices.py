"""Picking a torch device: "auto" finds what there is; a missing GPU is a clear error."""

from __future__ import annotations

import pytest
import torch

from tuna_core.devices import DeviceUnavailable, pick_device


def test_auto_and_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_named() -> None:
    with pytest.raises(DeviceUnavailable, match="no GPU is available"):
        pick_device("cuda")


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        pick_device("tpu")
