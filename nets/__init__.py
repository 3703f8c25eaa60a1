"""Network registry: architecture name -> builder, and name -> activation-memory estimate.

``build_network('mednext', size='S', kernel=5, num_classes=2)`` selects an entry; variants are
builder arguments, never subclasses. Every network returns a list of logit tensors (full
resolution first) when deep supervision is on and it is training, otherwise one tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from nets.mednext import build_mednext, mednext_activation_elements
from nets.unet import build_unet, unet_activation_elements

NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "unet": build_unet,
    "mednext": build_mednext,
}

# Same keyword arguments as the builder, plus patch_size and batch_size; no network is built.
ACTIVATION_ELEMENTS: dict[str, Callable[..., int]] = {
    "unet": unet_activation_elements,
    "mednext": mednext_activation_elements,
}


def _check_name(name: str) -> None:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choices: {sorted(NETWORKS)}")


def build_network(name: str, **kwargs) -> nn.Module:
    """Build the registered network ``name`` with the builder's keyword arguments."""
    _check_name(name)
    return NETWORKS[name](**kwargs)


def activation_elements(name: str, patch_size: Sequence[int], batch_size: int = 1, **kwargs) -> int:
    """Feature-map elements one training forward of network ``name`` stores for ``batch_size``
    patches of ``patch_size`` (nnU-Net's counting unit), from the builder arguments alone."""
    _check_name(name)
    return ACTIVATION_ELEMENTS[name](patch_size, batch_size=batch_size, **kwargs)
