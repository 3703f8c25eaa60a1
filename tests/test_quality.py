import csv
import math

import numpy as np
import pytest
from scipy import ndimage

from data import quality

SHAPE = (64, 56, 20)
SPACING = (1.5, 1.5, 2.5)


def ellipsoid(shape=SHAPE, radii=(0.32, 0.30, 0.38), centre=None):
    g = np.indices(shape).astype(float)
    c = centre if centre is not None else [s / 2 for s in shape]
    return sum(((g[a] - c[a]) / (r * s)) ** 2 for a, (s, r) in enumerate(zip(shape, radii))) <= 1


def rician(clean, sigma, rng):
    return np.sqrt((clean + rng.normal(0, sigma, clean.shape)) ** 2 + rng.normal(0, sigma, clean.shape) ** 2)


def dce(sigma=5.0, seed=0, body_level=100.0, lesion=80.0, shift0=None):
    """(2, X, Y, Z): a body (pre) and the same body with a bright enhancing blob (post)."""
    rng = np.random.default_rng(seed)
    body = ellipsoid()
    blob = ellipsoid(radii=(0.16, 0.15, 0.2))     # ~13 % of the body: more than the top 5 %
    pre = body * body_level
    post = pre + blob * lesion
    if shift0 is not None:
        pre = ndimage.shift(pre, shift0, order=0)
    return np.stack([rician(pre, sigma, rng), rician(post, sigma, rng)]).astype(np.float32)


# ---------------------------------------------------------------------------- noise and SNR
@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0])
def test_noise_sigma_recovered_from_air(sigma):
    s = quality.scores(dce(sigma), SPACING)
    assert s["noise_source"] == "air"
    assert s["noise_sigma"] == pytest.approx(sigma, rel=0.15)


def test_snr_moves_inversely_with_sigma():
    snrs = [quality.scores(dce(sig), SPACING)["snr"] for sig in (2.0, 5.0, 10.0)]
    assert snrs[0] > snrs[1] > snrs[2]
    # mean body signal 100 (plus the blob), sigma 5: about 20
    assert snrs[1] == pytest.approx(100 / 5, rel=0.2)


def test_noise_falls_back_to_residual_without_air():
    rng = np.random.default_rng(1)
    clean = np.full(SHAPE, 100.0)
    img = np.stack([clean + rng.normal(0, 4, SHAPE), clean + 20 + rng.normal(0, 4, SHAPE)]).astype(np.float32)
    body = np.ones(SHAPE, bool)
    sigma, source = quality.noise_sigma(img[1], body)
    assert source == "residual"
    assert sigma == pytest.approx(4.0, rel=0.15)


def test_cnr_scales_with_enhancement():
    lo = quality.scores(dce(5.0, lesion=40.0), SPACING)["cnr"]
    hi = quality.scores(dce(5.0, lesion=120.0), SPACING)["cnr"]
    assert hi > 2 * lo
    assert hi == pytest.approx(120 / 5, rel=0.25)


# ---------------------------------------------------------------------------- motion
def test_motion_known_shift():
    img = dce(3.0, shift0=(2, 0, 0))            # 2 voxels at 1.5 mm
    assert quality.scores(img, SPACING)["motion"] == pytest.approx(3.0, abs=0.5)


def test_motion_diagonal_shift_in_mm():
    img = dce(3.0, shift0=(0, 2, 1))            # 2 x 1.5 mm and 1 x 2.5 mm
    assert quality.scores(img, SPACING)["motion"] == pytest.approx(math.hypot(3.0, 2.5), abs=0.5)


def test_motion_none():
    assert quality.scores(dce(3.0), SPACING)["motion"] < 0.3


def test_motion_largest_over_phases():
    img = dce(3.0)
    moved = ndimage.shift(img[1], (0, 3, 0), order=0)
    img = np.concatenate([img, moved[None]])
    assert quality.scores(img, SPACING)["motion"] == pytest.approx(4.5, abs=0.5)


# ---------------------------------------------------------------------------- ghosting
def ghosted(a, axis=1, sigma=3.0, seed=0):
    rng = np.random.default_rng(seed)
    body = ellipsoid(radii=(0.22, 0.2, 0.38)) * 100.0
    clean = body + a * np.roll(body, SHAPE[axis] // 2, axis=axis)
    post = rician(clean, sigma, rng)
    return np.stack([post * 0.9, post]).astype(np.float32)


def test_ghosting_grows_with_amplitude_and_is_about_a():
    values = [quality.scores(ghosted(a), SPACING)["ghosting"] for a in (0.0, 0.05, 0.1, 0.2)]
    assert values == sorted(values)
    assert abs(values[0]) < 0.02
    for a, v in zip((0.05, 0.1, 0.2), values[1:]):
        assert v == pytest.approx(a, abs=0.25 * a + 0.01)


def test_ghosting_finds_the_axis():
    s = quality.scores(ghosted(0.15, axis=0), SPACING)
    assert s["ghost_axis"] == 0
    assert s["ghosting"] == pytest.approx(0.15, abs=0.05)


# ---------------------------------------------------------------------------- blur
def test_blur_increases_with_gaussian_sigma():
    base = dce(1.0)
    widths = []
    for sig_mm in (0.0, 1.0, 2.0, 3.0):
        img = base if sig_mm == 0 else np.stack(
            [ndimage.gaussian_filter(c, [sig_mm / s for s in SPACING]) for c in base])
        widths.append(quality.scores(img, SPACING)["blur"])
    assert all(b > a for a, b in zip(widths, widths[1:])), widths
    # a step blurred by a Gaussian of sigma s has a 10-90 % width of 2.563 s (plus the voxel)
    assert widths[-1] == pytest.approx(2.563 * 3.0, rel=0.3)


# ---------------------------------------------------------------------------- composite
def test_composite_signs_and_centers():
    rows = [dict(center="A", snr=10, cnr=10, motion=1, ghosting=0.01, blur=2),
            dict(center="A", snr=20, cnr=20, motion=0.5, ghosting=0.005, blur=1),   # better in all
            dict(center="A", snr=5, cnr=5, motion=2, ghosting=0.02, blur=4),        # worse in all
            dict(center="B", snr=1000, cnr=1000, motion=9, ghosting=0.5, blur=9)]   # alone: z = 0
    q = quality.composite(rows)
    assert q[1] > q[0] > q[2]
    assert q[0] == pytest.approx(0.0)
    assert q[3] == pytest.approx(0.0)


# ---------------------------------------------------------------------------- dataset and CLI
def test_score_dataset_cache_and_cli(tmp_path, monkeypatch, capsys):
    from conftest import write_tiny_dataset
    from data import mamamia
    root = write_tiny_dataset(tmp_path / "tiny", n=3)
    cases = mamamia.load_dataset(root)
    calls = []
    real = quality.scores

    def counting(image, spacing):
        calls.append(1)
        return real(image, spacing)

    monkeypatch.setattr(quality, "scores", counting)
    cache = tmp_path / "cache"
    rows = quality.score_dataset(cases, workers=1, progress=False, cache_dir=cache)
    assert len(calls) == 3
    assert [r["patient_id"] for r in rows] == [c.patient_id for c in cases]
    again = quality.score_dataset(cases, workers=1, progress=False, cache_dir=cache)
    assert len(calls) == 3                         # all from the cache
    assert [r["snr"] for r in again] == [r["snr"] for r in rows]
    # a changed file (size/mtime) is rescored; so is every case under a new code version
    p = cases[0].phase_paths[0]
    p.write_bytes(p.read_bytes())
    import os
    os.utime(p, ns=(1, 1))
    quality.score_dataset(cases, workers=1, progress=False, cache_dir=cache)
    assert len(calls) == 4
    monkeypatch.setattr(quality, "CODE_VERSION", quality.CODE_VERSION + 1)
    quality.score_dataset(cases, workers=1, progress=False, cache_dir=cache)
    assert len(calls) == 7

    out = tmp_path / "res" / "q.csv"
    assert quality.main(["--data", str(root), "--out", str(out), "--no-progress"]) == 0
    with open(out) as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == quality.COLUMNS
        table = list(reader)
    assert len(table) == 3 and all(np.isfinite(float(r["snr"])) for r in table)
    for s in quality.SCORES + ("quality",):
        assert (out.parent / f"q_{s}.png").is_file()
    assert "DUKE" in capsys.readouterr().out


def test_help_explains_scores(capsys):
    with pytest.raises(SystemExit):
        quality.main(["--help"])
    text = capsys.readouterr().out
    for s in quality.SCORES + ("quality",):
        assert f"  {s}" in text


def test_zero_padded_air_uses_residual_estimate():
    rng = np.random.default_rng(2)
    body = ellipsoid()
    img = np.stack([body * (100 + rng.normal(0, 4, SHAPE)), body * (130 + rng.normal(0, 4, SHAPE))])
    s = quality.scores(img.astype(np.float32), SPACING)     # exactly 0 outside: no usable air
    assert s["noise_source"] == "residual"
    assert s["noise_sigma"] == pytest.approx(4.0, rel=0.15)
    assert s["snr"] == pytest.approx(130 / 4, rel=0.15)


def test_blur_does_not_follow_noise():
    rng = np.random.default_rng(3)
    clean = ndimage.gaussian_filter(ellipsoid() * 100.0, [1.5 / s for s in SPACING])
    widths = []
    for sigma in (1.0, 5.0, 10.0):
        img = rician(clean, sigma, rng).astype(np.float32)
        widths.append(quality.scores(np.stack([img, img]), SPACING)["blur"])
    assert max(widths) - min(widths) < 0.1 * widths[0], widths
