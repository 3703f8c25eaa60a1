"""Tests for core/postprocess.py: largest connected component and box masking."""
import numpy as np
import pytest
import torch

from core.postprocess import largest_component, mask_to_box


def _mask(shape, voxels, dtype=np.uint8, value=1):
    m = np.zeros(shape, dtype)
    for v in voxels:
        m[v] = value
    return m


def test_keeps_larger_of_two_blobs():
    m = np.zeros((12, 12, 12), np.uint8)
    m[0:2, 0:2, 0:2] = 1  # 8 voxels
    m[5:8, 5:8, 5:8] = 1  # 27 voxels
    out = largest_component(m)
    expected = np.zeros_like(m)
    expected[5:8, 5:8, 5:8] = 1
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert m.sum() == 35  # input untouched


def test_empty_stays_empty():
    m = np.zeros((4, 5, 6), bool)
    out = largest_component(m)
    assert out.shape == (4, 5, 6) and not out.any()
    assert out is not m


def test_single_component_unchanged_and_values_kept():
    m = np.zeros((6, 6, 6), np.int16)
    m[1:4, 2, 2] = 3
    np.testing.assert_array_equal(largest_component(m), m)


# A: 2 voxels along x; B: 3 voxels along z. B touches A only at a corner (26) or an edge (18).
_A = [(1, 1, 1), (2, 1, 1)]
_B_CORNER = [(3, 2, 2), (3, 2, 3), (3, 2, 4)]  # (2,1,1)-(3,2,2): differs in all three axes
_B_EDGE = [(3, 2, 1), (4, 2, 1), (5, 2, 1)]  # (2,1,1)-(3,2,1): differs in two axes


@pytest.mark.parametrize(
    "b, connectivity, keep_all",
    [
        (_B_CORNER, 26, True),
        (_B_CORNER, 18, False),
        (_B_CORNER, 6, False),
        (_B_EDGE, 26, True),
        (_B_EDGE, 18, True),
        (_B_EDGE, 6, False),
    ],
)
def test_diagonal_connections_follow_connectivity(b, connectivity, keep_all):
    m = _mask((8, 8, 8), _A + b)
    out = largest_component(m, connectivity=connectivity)
    expected = m if keep_all else _mask((8, 8, 8), b)  # otherwise B (3 voxels) beats A (2)
    np.testing.assert_array_equal(out, expected)


def test_default_connectivity_is_26():
    m = _mask((8, 8, 8), _A + _B_CORNER)
    np.testing.assert_array_equal(largest_component(m), m)


def test_tie_keeps_component_first_in_raster_order():
    first = [(0, 5, 5), (0, 5, 6)]  # first foreground voxel in C order has x = 0
    second = [(4, 0, 0), (4, 0, 1)]
    m = _mask((6, 7, 7), second + first)
    np.testing.assert_array_equal(largest_component(m), _mask((6, 7, 7), first))


def test_torch_input_returns_torch():
    m = torch.zeros(6, 6, 6, dtype=torch.uint8)
    m[0, 0, 0] = 1
    m[3:5, 3:5, 3:5] = 1
    out = largest_component(m)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.sum().item() == 8 and out[0, 0, 0].item() == 0


@pytest.mark.parametrize("bad", [{"connectivity": 8}, {"mask": np.zeros((4, 4))}])
def test_largest_component_rejects_bad_arguments(bad):
    args = {"mask": np.zeros((4, 4, 4)), "connectivity": 26}
    args.update(bad)
    with pytest.raises(ValueError):
        largest_component(**args)


def test_mask_to_box_numpy_and_torch():
    m = np.ones((5, 6, 7), np.uint8)
    box = (slice(1, 3), slice(0, 6), slice(2, 7))
    out = mask_to_box(m, box)
    assert out.sum() == 2 * 6 * 5
    assert out[box].all() and out[0].sum() == 0 and out[:, :, :2].sum() == 0
    assert m.sum() == 5 * 6 * 7  # input untouched
    t = torch.ones(2, 5, 6, 7)  # leading channel axis: box applies to the trailing axes
    out_t = mask_to_box(t, box)
    assert isinstance(out_t, torch.Tensor)
    assert out_t.sum().item() == 2 * 2 * 6 * 5
    assert out_t[:, 0].sum().item() == 0


@pytest.mark.parametrize("box", [(slice(0, 2, 2), slice(None), slice(None)),
                                 (slice(0, 1),) * 4, (0, slice(None), slice(None))])
def test_mask_to_box_rejects_bad_box(box):
    with pytest.raises(ValueError):
        mask_to_box(np.ones((3, 3, 3)), box)
