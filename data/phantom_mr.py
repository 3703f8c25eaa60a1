"""MR acquisition physics of the synthetic breast DCE-MRI phantom: coil shading, slice profile,
magnitude noise.

- Receive-coil shading (:func:`bias_field`): a prone breast coil has loops beside each breast; by
  reciprocity the receive sensitivity of a loop of radius ``R`` at distance ``z`` along its axis
  follows the on-axis Biot-Savart field ``R^2 / (R^2 + z^2)^(3/2)`` (Hoult & Richards 1976,
  J Magn Reson 24:71). The phantom places one loop lateral and one medial of each breast at the
  level of the breast centre (radius ``Look.coil_depth`` times the breast radius), sums their
  sensitivities and takes ``g = log(sum)``, centred on its mean inside the body and scaled to a
  maximum |g| of 1 over the field of view: the coil term of ``log(bias)`` is ``Look.coil * g``
  (brighter near the coil, darker towards the chest wall and the heart). A smooth quadratic
  polynomial in the voxel coordinates, also scaled to a maximum |.| of 1, times the acquisition's
  ``CaseSpec.bias`` adds transmit-field and residual inhomogeneity. So
  ``|log bias| <= Look.coil + CaseSpec.bias`` everywhere.
- Slice profile (:func:`slice_profile`): real excitation profiles are not rectangular; the
  overlap between neighbouring slices is modelled as a Gaussian of 0.3 slices along the slice
  axis, on top of the partial-volume averaging over the slice thickness
  (:func:`data.phantom_pv.coverage`).
- Pulsatile blood flow (:func:`flow_modulation`): blood in the heart and great vessels moves
  during the acquisition, and gradient-echo images show it as intravoxel dephasing and
  inflow/outflow signal changes that differ from one acquisition to the next (Bradley & Waluch
  1985, Radiology 154:443). Each phase multiplies the blood pool by its own smooth random field
  (correlation length ``FLOW_CORR_MM``, relative amplitude ``FLOW_DEPTH``, clipped to
  ``FLOW_CLIP``), faded to 1 over about a voxel at the pool's wall so that the wall keeps its
  partial-volume edge. The subtraction of two phases therefore shows a mottled, not a uniformly
  bright, heart.
- Magnitude noise (:func:`magnitude`): independent Gaussian noise of the same sigma on the real and
  imaginary channels, magnitude taken: a Rician distribution, Rayleigh where there is no signal
  (mean / std = sqrt(pi/2) / sqrt(2 - pi/2) = 1.913; Gudbjartsson & Patz 1995, Magn Reson Med
  34:910).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from data.phantom_body import _breast_centre
from data.phantom_spec import CaseSpec, Look

RAYLEIGH_MEAN_OVER_STD = float(np.sqrt(np.pi / 2) / np.sqrt(2 - np.pi / 2))   # 1.913
SLICE_OVERLAP = 0.3      # slices: sigma of the Gaussian slice-to-slice overlap
FLOW_CORR_MM = 10.0      # correlation length of the flow-related signal change (mm)
FLOW_DEPTH = 0.35        # its relative standard deviation
FLOW_CLIP = (0.3, 1.4)   # bounds of the multiplicative factor


def coil_sensitivity(spec: CaseSpec, look: Look, u, v, w) -> np.ndarray:
    """Sum of the on-axis loop sensitivities of the coil elements (see the module docstring)."""
    an = spec.anatomy
    out = np.zeros(u.shape, np.float32)
    for side in (1, -1):
        cu, cv, cw, _ = _breast_centre(side, an)
        cv = cv + 0.3 * an.breast_r[1]                 # the loops sit at the breast's mid-depth
        radius = np.float32(look.coil_depth * 0.5 * (an.breast_r[0] + an.breast_r[2]))
        for lateral in (1, -1):
            pos = cu + side * lateral * 1.25 * an.breast_r[0]
            z = (u - np.float32(pos))                  # along the loop axis (left-right)
            rho2 = (v - np.float32(cv)) ** 2 + (w - np.float32(cw)) ** 2
            # off-axis fall-off approximated by adding the transverse distance to the axial one
            out += radius ** 2 / (radius ** 2 + z * z + np.float32(0.5) * rho2) ** 1.5 * radius
    return out


def bias_field(spec: CaseSpec, look: Look, rng, u, v, w, body: np.ndarray) -> np.ndarray:
    """Multiplicative bias (float32, > 0): coil shading times a smooth polynomial field;
    ``|log bias| <= look.coil + spec.bias``. ``body``: bool mask for centring the coil term."""
    g = np.log(coil_sensitivity(spec, look, u, v, w))
    g -= np.float32(g[body].mean() if body.any() else g.mean())
    g /= max(float(np.abs(g).max()), 1e-6)
    shape = u.shape
    axes = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if b == a else 1 for b in range(3)])
            for a, n in enumerate(shape)]
    c = rng.normal(0, 1, 9).astype(np.float32)
    x, y, z = axes
    poly = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z
    poly = poly + c[6] * x * y + c[7] * x * z + c[8] * y * z
    poly = poly - poly.mean()
    poly /= max(float(np.abs(poly).max()), 1e-6)
    log = np.float32(look.coil) * g + np.float32(spec.bias) * poly
    return np.exp(log).astype(np.float32)


def flow_modulation(mask: np.ndarray, spacing, rng, depth: float = FLOW_DEPTH,
                    corr_mm: float = FLOW_CORR_MM):
    """One acquisition's flow-related signal factor on the blood pool ``mask`` (see the module
    docstring): ``(box, factor)`` with ``factor`` (float32, the shape of ``mask[box]``) 1 outside
    the pool and its wall, or ``None`` when the mask is empty. Multiply ``s[box] *= factor``."""
    nz = np.argwhere(mask)
    if nz.size == 0:
        return None
    lo = np.maximum(nz.min(0) - 2, 0)
    hi = np.minimum(nz.max(0) + 3, np.asarray(mask.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    sp = np.asarray(spacing, float)
    # white noise on a grid of corr_mm, cubic-interpolated to the voxels: a smooth random field
    coarse = tuple(int(np.ceil(n * s / corr_mm)) + 2 for n, s in zip(shape, sp))
    g = ndimage.zoom(rng.standard_normal(coarse).astype(np.float32),
                     [n / c for n, c in zip(shape, coarse)], order=3, mode="nearest", grid_mode=True)
    g = g[:shape[0], :shape[1], :shape[2]]
    g -= g.mean()
    g /= max(float(g.std()), 1e-6)
    factor = np.clip(1 + np.float32(depth) * g, *FLOW_CLIP).astype(np.float32)
    # fade to 1 across the wall (about one voxel), so the pool's edge stays a partial-volume ramp
    w = ndimage.gaussian_filter(mask[box].astype(np.float32), 0.7) * mask[box]
    factor = 1 + w * (factor - 1)
    return box, factor.astype(np.float32)


def slice_profile(s: np.ndarray) -> np.ndarray:
    """Slice-to-slice overlap along the slice axis (axis 2 in both views)."""
    if s.shape[2] < 3:
        return s
    return ndimage.gaussian_filter1d(s, SLICE_OVERLAP, axis=2, truncate=4.0)


def magnitude(s: np.ndarray, sigma: float, rng) -> np.ndarray:
    """|s + n1 + i n2|, n1, n2 ~ N(0, sigma^2) independent (Rician); float32."""
    shape = s.shape
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n1 *= np.float32(sigma)
    n1 += s
    np.square(n1, out=n1)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    n2 *= np.float32(sigma)
    np.square(n2, out=n2)
    n1 += n2
    np.sqrt(n1, out=n1)
    return n1
