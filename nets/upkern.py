"""UpKern: initialise a large-kernel network from a trained small-kernel one (MedNeXt, Roy et al. 2023).

Every entry of the target's state dict is taken from the source state dict:

* equal shape: copied bit for bit (cast to the target's dtype if they differ);
* a convolution weight ``(C_out, C_in/groups, kx, ky, kz)`` whose two leading dims match but whose
  kernel differs: trilinearly interpolated to the target's kernel size with
  ``align_corners=False`` (PyTorch's default, which MedNeXt's ``upkern_load_weights`` relies on by
  calling ``F.interpolate(..., mode='trilinear')`` without it), computed in float32;
* anything else (a key missing on either side, a channel or non-kernel shape mismatch) means the
  architectures differ in more than the kernel size: ValueError naming the key.

Keys starting with one of the ``skip`` prefixes (e.g. ``"heads."`` when the number of classes
changed) are left untouched and need not exist in the source. MedNeXt's own loader only warns about
keys it cannot match; here that is an error, so a wrong checkpoint cannot load silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UpKernReport:
    """Keys of the target state dict by what happened to them (each in state-dict order)."""

    copied: tuple[str, ...]
    resized: tuple[str, ...]
    untouched: tuple[str, ...]


def resize_kernel(weight: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """Trilinear resize of a conv weight ``(C_out, C_in/groups, kx, ky, kz)`` to ``kernel``
    (align_corners=False), in float32, returned in the weight's dtype."""
    resized = F.interpolate(weight.float(), size=tuple(kernel), mode="trilinear", align_corners=False)
    return resized.to(weight.dtype)


def upkern_load(target_model: nn.Module, source_state_dict: Mapping[str, torch.Tensor],
                skip: Iterable[str] = ()) -> UpKernReport:
    """Load ``source_state_dict`` into ``target_model`` in place, resizing kernels (module docstring).

    Nothing is written unless every key can be matched. Returns which keys were copied, resized
    and left untouched.
    """
    skip = tuple(skip)
    target = target_model.state_dict()

    def is_skipped(key: str) -> bool:
        return bool(skip) and key.startswith(skip)

    extra = [k for k in source_state_dict if k not in target and not is_skipped(k)]
    if extra:
        raise ValueError(f"source has key {extra[0]!r} that the target model lacks ({len(extra)} such keys)")
    plan: dict[str, torch.Tensor] = {}
    copied, resized, untouched = [], [], []
    for key, dst in target.items():
        if is_skipped(key):
            untouched.append(key)
            continue
        if key not in source_state_dict:
            raise ValueError(f"target key {key!r} is missing from the source state dict")
        src = source_state_dict[key]
        if src.shape == dst.shape:
            plan[key] = src.to(dst.dtype)
            copied.append(key)
        elif src.ndim == dst.ndim == 5 and src.shape[:2] == dst.shape[:2] and src.is_floating_point():
            plan[key] = resize_kernel(src, tuple(dst.shape[2:])).to(dst.dtype)
            resized.append(key)
        else:
            raise ValueError(f"key {key!r}: source shape {tuple(src.shape)} and target shape "
                             f"{tuple(dst.shape)} differ in more than the kernel size")
    with torch.no_grad():
        for key, value in plan.items():
            target[key].copy_(value)
    return UpKernReport(tuple(copied), tuple(resized), tuple(untouched))
