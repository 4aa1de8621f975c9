"""Which torch device a training run or an inference engine uses.

`device` settings take "auto" (a GPU when there is one, else the CPU), "cpu" or "cuda"; asking
for "cuda" where there is none is an error here, not a crash deep inside the first forward pass.
torch is imported when a device is picked, not with this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)


class DeviceUnavailable(RuntimeError):
    """The requested device is not on this machine."""


def pick_device(requested: str) -> torch.device:
    import torch

    if requested not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {requested!r}")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable("device 'cuda' was requested but no GPU is available")
    return torch.device(requested)
