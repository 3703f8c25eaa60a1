"""Partial-volume tissue mixing of the synthetic breast DCE-MRI phantom.

A voxel of a real scan averages the signal of everything inside its box (in-plane pixel times
slice thickness), so at a tissue boundary it holds a mixture. The phantom models this
analytically instead of rendering a finer grid and averaging down:

- :func:`coverage`: the fraction of a voxel inside ``{phi > 0}`` for a smooth level-set ``phi``
  (a signed distance, or a smooth random field minus its threshold). To first order ``phi`` is
  linear across the voxel box, and the box spans ``width = sum_i |phi(x + e_i) - phi(x)|`` of
  ``phi`` (the sum over the three voxel axes of the change of ``phi`` over one voxel step: for a
  signed distance in mm and a box of spacings ``s_i`` this is ``sum_i |n_i| s_i``, the extent of
  the box along the normal ``n``). The covered fraction is then ``clip(1/2 + phi / width, 0, 1)``
  (a linear ramp over the box; the exact value for a box is a piecewise polynomial, the CDF of a
  sum of uniform variables, which differs from the ramp by at most ~0.12 near its ends).
  Thick slices therefore give wide ramps across oblique boundaries, the
  partial-volume effect of the slice profile.
- :class:`TissueMix`: every voxel holds the two tissues of largest weight and the weight of the
  first; :meth:`TissueMix.paint` composites a structure of fractional coverage ``alpha`` over
  what is there (painter's order: later structures lie in front), keeping the two largest
  components and renormalising. The signal of a voxel is the weighted sum of its two tissues'
  signals; the dominant tissue is the label map.
"""
from __future__ import annotations

import numpy as np


def _central_width(phi: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``sum_i |d phi / d i|`` by central differences (one-sided at the borders, as
    ``np.gradient``) at the flat indices ``idx`` of a C-contiguous ``phi``."""
    flat = phi.ravel()
    width = np.zeros(idx.size, np.float32)
    stride = 1
    for ax in range(phi.ndim - 1, -1, -1):
        n = phi.shape[ax]
        if n > 1:
            c = (idx // stride) % n
            hi = np.where(c < n - 1, idx + stride, idx)
            lo = np.where(c > 0, idx - stride, idx)
            width += np.abs(flat[hi] - flat[lo]) / ((hi != idx).astype(np.float32) + (lo != idx))
        stride *= n
    return width


def coverage(phi: np.ndarray, width: np.ndarray | None = None, band: float | None = None) -> np.ndarray:
    """Fraction of each voxel inside ``{phi > 0}`` (float32 in [0, 1], see the module docstring).

    ``width``: the change of ``phi`` across one voxel box (same shape, or a scalar); estimated
    from the central differences of ``phi`` along the three voxel axes when not given.
    ``band``: when ``phi`` is a distance-like field whose width is known to stay below ``2 band``,
    only voxels with ``|phi| < band`` are mixed (the others are 0 or 1), which is faster."""
    phi = np.ascontiguousarray(phi, np.float32)
    if width is None and band is not None:
        out = (phi > 0).astype(np.float32)
        idx = np.flatnonzero(np.abs(phi) < np.float32(band))
        if idx.size:
            w = np.maximum(_central_width(phi, idx), np.float32(1e-6))
            out.ravel()[idx] = np.clip(phi.ravel()[idx] / w + np.float32(0.5), 0.0, 1.0)
        return out
    if width is None:
        width = np.zeros(phi.shape, np.float32)
        for ax in range(phi.ndim):
            if phi.shape[ax] > 1:
                width += np.abs(np.gradient(phi, axis=ax))
    w = np.maximum(np.asarray(width, np.float32), np.float32(1e-6))
    out = phi / w
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


class TissueMix:
    """Two-component tissue mixture per voxel: codes ``a``, ``b`` (uint8) and weight ``f`` of ``a``."""

    def __init__(self, shape, background: int = 0):
        n = int(np.prod(shape))
        self.shape = tuple(shape)
        self.a = np.full(n, background, np.uint8)
        self.b = np.full(n, background, np.uint8)
        self.f = np.ones(n, np.float32)

    def paint(self, alpha: np.ndarray, code: int, box=None) -> None:
        """Composite tissue ``code`` with coverage ``alpha`` (in [0, 1]) over the current mix.

        ``box``: a tuple of slices; then ``alpha`` has the shape of that box."""
        alpha = np.asarray(alpha, np.float32).ravel()
        nz = np.flatnonzero(alpha > 0)
        al = alpha[nz]
        if box is None:
            idx = nz
        else:
            bshape = tuple(s.stop - s.start for s in box)
            loc = np.unravel_index(nz, bshape)
            idx = np.ravel_multi_index(tuple(x + s.start for x, s in zip(loc, box)), self.shape)
        full = al >= 1.0
        if full.any():
            j = idx[full]
            self.a[j] = code
            self.b[j] = code
            self.f[j] = 1.0
        part = ~full
        if not part.any():
            return
        j, al = idx[part], al[part]
        a, b, f = self.a[j], self.b[j], self.f[j]
        old_c = f * (a == code) + (1 - f) * (b == code)
        wc = al + (1 - al) * old_c
        other = np.where(a == code, b, np.where(b == code, a, np.where(f >= 0.5, a, b)))
        wo = (1 - al) * np.where(a == code, 1 - f, np.where(b == code, f, np.maximum(f, 1 - f)))
        self.a[j] = code
        self.b[j] = other
        self.f[j] = wc / np.maximum(wc + wo, np.float32(1e-12))

    def weight(self, code: int) -> np.ndarray:
        """Weight of tissue ``code`` in every voxel (float32, the volume's shape)."""
        w = self.f * (self.a == code) + (1 - self.f) * (self.b == code)
        return w.reshape(self.shape)

    def dominant(self) -> np.ndarray:
        """Label map: the tissue of larger weight in every voxel (uint8, the volume's shape)."""
        return np.where(self.f >= 0.5, self.a, self.b).reshape(self.shape)
