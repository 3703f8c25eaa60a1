"""Network registry: architecture name -> how to build it, count its activations, describe it.

A network is described by a ``core.config.NetSpec`` (registry name + builder keyword
arguments); ``build(spec)`` is the only way the project makes one. ``network_spec(plan, name)``
derives that description from a plan's architecture entry, once, when a run is created.
Variants are builder arguments, never subclasses. Every network returns a list of logit tensors
(full resolution first) when deep supervision is on and it is training, otherwise one tensor.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.config import NetSpec
from core.plan import ArchSpec, Plan


@dataclass(frozen=True)
class Entry:
    module: str                               # nets.<module> holds the builder and the counter,
    builder: str                              # imported on first use (the registry itself needs
    counter: str                              # no torch, so command-line checks answer at once)
    arch_kwargs: Callable[[ArchSpec], dict]   # a plan's ArchSpec -> builder kwargs (topology)
    default_optimizer: str                    # a key of core.optim.OPTIMIZERS
    plan_keys: tuple[str, ...] = ()           # ArchSpec fields a run may set (--size, --kernel)
    options: tuple[tuple[str, str], ...] = () # (train.py flag, builder argument) pairs
    cpu_patch: int | None = None              # largest patch edge of the CPU plan

    @property
    def build(self) -> Callable:
        return getattr(importlib.import_module(f"nets.{self.module}"), self.builder)

    @property
    def activation_elements(self) -> Callable[..., int]:
        """Builder kwargs + patch_size, batch_size -> feature-map elements."""
        return getattr(importlib.import_module(f"nets.{self.module}"), self.counter)


def _unet_kwargs(spec: ArchSpec) -> dict:
    return dict(features=spec.features, kernel_sizes=spec.kernel_sizes, strides=spec.strides,
                n_conv_per_stage=spec.n_conv_per_stage)


def _mednext_kwargs(spec: ArchSpec) -> dict:
    return dict(size=spec.size, kernel=spec.kernel, base_channels=spec.base_channels)


REGISTRY: dict[str, Entry] = {
    # nnU-Net v2 trains its U-Net with SGD (nnUNetTrainer.configure_optimizers)
    "unet": Entry("unet", "build_unet", "unet_activation_elements", _unet_kwargs, "sgd"),
    # MedNeXt trains with AdamW (Roy et al. 2023, s.3; nnUNetTrainerV2_MedNeXt)
    # On a 2-core CPU a MedNeXt-S step costs ~3x a U-Net step per voxel (depthwise convolutions),
    # so the CPU plan trains it on 48^3 patches (bench/README.md).
    "mednext": Entry("mednext", "build_mednext", "mednext_activation_elements", _mednext_kwargs, "adamw",
                     plan_keys=("size", "kernel"), options=(("grad_checkpoint", "checkpoint"),), cpu_patch=48),
}


DEFAULT_NETWORK = "unet"   # what train.py trains without --arch (nnU-Net's plain U-Net)


def names() -> list[str]:
    return sorted(REGISTRY)


def entry(name: str) -> Entry:
    if name not in REGISTRY:
        raise ValueError(f"unknown network {name!r}; choices: {names()}")
    return REGISTRY[name]


def build_network(name: str, **kwargs):
    """Build the registered network ``name`` with the builder's keyword arguments."""
    return entry(name).build(**kwargs)


def build(spec: NetSpec):
    """The network ``spec`` describes (weights freshly initialised)."""
    return build_network(spec.name, **spec.kwargs)


def activation_elements(name: str, patch_size: Sequence[int], batch_size: int = 1, **kwargs) -> int:
    """Feature-map elements one training forward of network ``name`` stores for ``batch_size``
    patches of ``patch_size`` (nnU-Net's counting unit), from the builder arguments alone."""
    return entry(name).activation_elements(patch_size, batch_size=batch_size, **kwargs)


def arch_activation_elements(spec: ArchSpec, patch_size: Sequence[int], batch_size: int) -> int:
    """The planner's callback: activations of a plan's architecture entry (2 classes)."""
    return activation_elements(spec.name, patch_size, batch_size, num_classes=2, **entry(spec.name).arch_kwargs(spec))


def network_spec(plan: Plan, name: str, num_classes: int = 2, deep_supervision: bool = True,
                 **options) -> NetSpec:
    """The description of network ``name`` for ``plan``: topology from ``plan.archs[name]``,
    input channels from ``plan.channels``; ``options`` are further builder arguments (e.g.
    MedNeXt's ``checkpoint``)."""
    entry(name)
    if name not in plan.archs:
        raise ValueError(f"the plan has no entry for network {name!r} (it plans {sorted(plan.archs)})")
    kwargs = dict(in_channels=len(plan.channels), num_classes=num_classes, deep_supervision=deep_supervision,
                  **REGISTRY[name].arch_kwargs(plan.archs[name]), **options)
    return NetSpec(name, kwargs)
