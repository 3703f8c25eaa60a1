"""Post-processing of predicted segmentations: largest connected component, box masking.

nnU-Net v2 (``nnunetv2/postprocessing/remove_connected_components.py``) keeps the largest
foreground component only if cross-validation shows it helps; the decision belongs to the caller,
these are the operations.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

# connectivity (voxels sharing a face / face or edge / face, edge or corner) -> scipy rank
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}


def largest_component(mask, connectivity: int = 26):
    """Keep only the largest connected foreground component of a 3-D mask.

    Args:
        mask: (X, Y, Z) numpy array or torch tensor; nonzero voxels are foreground.
        connectivity: 6, 18 or 26 neighbours (26 = full 3x3x3 structure, the default; nnU-Net's
            ``remove_all_but_largest_component`` labels with skimage's full connectivity, also 26).

    Returns:
        An array of the same type, dtype and shape: the input values inside the largest component,
        0 elsewhere. An empty mask comes back empty (a copy).

    Ties: among components of equal size the one with the smallest scipy label wins, i.e. the one
    containing the first foreground voxel in C (X-major, then Y, then Z) raster order.
    """
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    is_torch = isinstance(mask, torch.Tensor)
    arr = mask.detach().cpu().numpy() if is_torch else np.asarray(mask)
    if arr.ndim != 3:
        raise ValueError(f"mask must be 3-D (X, Y, Z), got shape {arr.shape}")
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    labels, n = ndimage.label(arr != 0, structure=structure)
    out = arr.copy()
    if n > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0  # background
        keep = int(np.argmax(sizes))  # argmax returns the first maximum: smallest label on ties
        out[labels != keep] = 0
    if is_torch:
        return torch.from_numpy(out).to(mask.device)
    return out


def mask_to_box(mask, box: Sequence[slice]):
    """Zero everything outside ``box``; returns a new array of the same type.

    Args:
        mask: (..., X, Y, Z) numpy array or torch tensor.
        box: one slice per trailing spatial axis, already in the array's axis order (X, Y, Z).
    """
    if len(box) > mask.ndim:
        raise ValueError(f"box has {len(box)} slices but the mask has {mask.ndim} axes")
    if not all(isinstance(s, slice) and s.step in (None, 1) for s in box):
        raise ValueError(f"box entries must be slices with step 1, got {box!r}")
    index = (Ellipsis, *box)
    if isinstance(mask, torch.Tensor):
        out = torch.zeros_like(mask)
    else:
        mask = np.asarray(mask)
        out = np.zeros_like(mask)
    out[index] = mask[index]
    return out
