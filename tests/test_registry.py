"""Network registry: every entry honours the output contract; names and estimates are consistent."""

import pytest
import torch

from nets import REGISTRY, activation_elements, build_network


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Tiny configuration per registry entry, 2 input channels, 3 classes, and an input it accepts.
TINY = {
    "unet": (dict(in_channels=2, num_classes=3, features=(4, 8, 8), kernel_sizes=3, strides=(1, 2, 2)),
             (16, 8, 8)),
    "mednext": (dict(size="S", kernel=3, in_channels=2, num_classes=3, base_channels=4), (32, 16, 16)),
}


def test_registry_lists_every_architecture():
    assert set(REGISTRY) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_output_contract(name):
    kwargs, patch = TINY[name]
    torch.manual_seed(0)
    x = torch.randn(2, 2, *patch)
    net = build_network(name, deep_supervision=True, **kwargs)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) >= 2
    assert outs[0].shape == (2, 3, *patch)
    sizes = [o.shape[2:].numel() for o in outs]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]  # full resolution first
    assert all(o.shape[:2] == (2, 3) for o in outs)
    with torch.no_grad():
        single = net.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *patch)
    plain = build_network(name, deep_supervision=False, **kwargs).train()
    assert isinstance(plain(x), torch.Tensor)


@pytest.mark.parametrize("name", sorted(TINY))
def test_activation_elements_registry_matches_method(name):
    kwargs, patch = TINY[name]
    net = build_network(name, **kwargs)
    assert activation_elements(name, patch, batch_size=3, **kwargs) == net.activation_elements(patch, 3)
    assert activation_elements(name, patch, batch_size=3, **kwargs) == 3 * activation_elements(name, patch, **kwargs)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown network 'swin'.*mednext.*unet"):
        build_network("swin")
    with pytest.raises(ValueError, match="unknown network"):
        activation_elements("swin", (32, 32, 32))
