"""Checks and pictures of the synthetic MAMA-MIA-like dataset.

The hardness check (a naive threshold + largest-component segmenter and its best mean Dice), the
parenchyma texture (grey-level co-occurrence features, :func:`glcm_features`) and the preview PNG
(one case per center: phases, subtraction, mask and enhancement curves).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from core.metrics import dice
from core.postprocess import largest_component
from data import io
from data.phantom_cases import draw_cases
from data.phantom_centers import CENTERS
from data.phantom_kinetics import LABELS
from data.phantom_render import render_case


NAIVE_QUANTILES = (0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
NAIVE_VALUES = tuple(float(v) for v in np.geomspace(100, 3000, 10).round())


def naive_threshold_dice(pairs, quantiles=NAIVE_QUANTILES, values=NAIVE_VALUES) -> dict:
    """The naive segmenter used as the hardness check: threshold the first subtraction image
    (phase 1 - phase 0), keep the largest 26-connected component. One global threshold for all
    cases, chosen to maximise mean Dice over a grid of per-case quantiles and absolute values.

    ``pairs``: iterable of (subtraction (X, Y, Z), mask (X, Y, Z)). Returns best mean Dice, the
    winning threshold and the mean Dice of every candidate.
    """
    pairs = [(np.asarray(s, np.float32), np.asarray(m) > 0) for s, m in pairs]
    if not pairs:
        raise ValueError("naive_threshold_dice: no cases")
    cands = {}
    per_q = [np.quantile(s, quantiles) for s, _ in pairs]
    for j, q in enumerate(quantiles):
        cands[f"q{q}"] = [dice(largest_component(s > per_q[i][j]), m) for i, (s, m) in enumerate(pairs)]
    for v in values:
        cands[f"v{v:g}"] = [dice(largest_component(s > v), m) for s, m in pairs]
    means = {k: float(np.mean(d)) for k, d in cands.items()}
    best = max(means, key=means.get)
    return dict(dice=means[best], threshold=best, per_case=cands[best], candidates=means)


GLCM_LEVELS = 32


def glcm_features(img: np.ndarray, mask: np.ndarray, levels: int = GLCM_LEVELS) -> dict:
    """Grey-level co-occurrence texture of ``img`` inside ``mask`` (2-D): intensities quantised to
    ``levels`` between the 1st and 99th percentile inside the mask; symmetric co-occurrence of
    in-mask neighbour pairs at distance 1 along both axes, summed and normalised (Haralick et al.
    1973, IEEE SMC 3:610). Returns contrast ``sum P (i-j)^2``, correlation
    ``sum P (i-mu_i)(j-mu_j) / (sd_i sd_j)`` and entropy ``-sum P log2 P`` (bits)."""
    img, mask = np.asarray(img, np.float64), np.asarray(mask, bool)
    lo, hi = np.percentile(img[mask], [1, 99])
    q = (np.clip((img - lo) / max(hi - lo, 1e-12), 0, 0.999999) * levels).astype(np.int64)
    counts = np.zeros(levels * levels, np.int64)
    for ax in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        both = mask[tuple(a)] & mask[tuple(b)]
        i, j = q[tuple(a)][both], q[tuple(b)][both]
        counts += np.bincount(i * levels + j, minlength=levels * levels)
        counts += np.bincount(j * levels + i, minlength=levels * levels)
    if counts.sum() == 0:
        raise ValueError("glcm_features: no neighbour pairs inside the mask")
    P = counts.reshape(levels, levels) / counts.sum()
    i, j = np.indices(P.shape)
    mu_i, mu_j = (i * P).sum(), (j * P).sum()
    sd_i, sd_j = np.sqrt(((i - mu_i) ** 2 * P).sum()), np.sqrt(((j - mu_j) ** 2 * P).sum())
    nz = P[P > 0]
    return dict(contrast=float((P * (i - j) ** 2).sum()),
                correlation=float(((i - mu_i) * (j - mu_j) * P).sum() / max(sd_i * sd_j, 1e-12)),
                entropy=float(-(nz * np.log2(nz)).sum()))


def parenchyma_texture(rendered, min_pixels: int = 200) -> dict:
    """Mean :func:`glcm_features` of the pre-contrast phase over the slices with at least
    ``min_pixels`` parenchyma pixels (parenchyma eroded by one pixel in-plane, so that the texture
    is the gland's, not its border's); NaNs when no slice qualifies."""
    g = ndimage.binary_erosion(rendered.labels == LABELS["fgt"], np.ones((3, 3, 1), bool))
    img = rendered.phases[0]
    feats = [glcm_features(img[:, :, z], g[:, :, z]) for z in range(img.shape[2])
             if g[:, :, z].sum() >= min_pixels]
    keys = ("contrast", "correlation", "entropy")
    return {k: float(np.mean([f[k] for f in feats])) if feats else float("nan") for k in keys}


def texture_by_center(seed: int = 0, scale: str = "small", cases: int = 40, per_center: int = 3) -> dict:
    """{center: mean :func:`parenchyma_texture` over its first ``per_center`` cases} of the dataset
    of ``cases`` cases drawn from ``seed`` (cases are rendered, nothing is written)."""
    out: dict = {}
    for pc in draw_cases(cases, seed, scale):
        rows = out.setdefault(pc.spec.center, [])
        if len(rows) < per_center:
            rows.append(parenchyma_texture(render_case(pc.spec)))
    return {c: {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]} | {"cases": len(rows)}
            for c, rows in out.items()}


def dataset_subtractions(root, ids=None):
    """(phase 1 - phase 0, expert mask) for every case of a dataset folder, on the _0001 grid."""
    from data import mamamia

    for case in mamamia.load_dataset(root):
        if ids is not None and case.patient_id not in ids:
            continue
        arr, _, aff = mamamia.load_image(case, phases=[0, 1])
        yield arr[1] - arr[0], mamamia.load_mask(case, aff, arr.shape[1:])


def centers_table(root) -> str:
    """Per-center facts of a phantom dataset folder, from its JSON records and latents: first
    post-contrast time, field strength and manufacturer shares, record missingness, pCR rate
    and the median quality causes (noise, realised motion, ghost, point-spread)."""
    import csv
    import json

    recs = [json.loads(p.read_text()) for p in sorted((Path(root) / "patient_info_files").glob("*.json"))]
    with open(Path(root) / "phantom_latents.csv", newline="") as fh:
        lat = {r["patient_id"]: r for r in csv.DictReader(fh)}
    head = ["center", "n", "1st post s (median, range)", "3T", "GE/SIE/PHI", "meno miss", "dens rep",
            "subtype miss", "pCR", "noise", "motion mm", "ghost", "psf mm"]
    body = []
    for name in CENTERS:
        rs = [r for r in recs if r["imaging_data"]["dataset"] == name]
        if not rs:
            continue
        first = np.array([r["imaging_data"]["acquisition_times"][1] for r in rs])
        share = lambda f: np.mean([f(r) for r in rs])
        man = "/".join(f"{share(lambda r, m=m: r['imaging_data']['scanner_manufacturer'] == m):.2f}"
                       for m in ("GE", "SIEMENS", "Philips"))
        pcr = [r["primary_lesion"]["pcr"] for r in rs if r["primary_lesion"]["pcr"] is not None]
        med = lambda k: np.median([float(lat[r["patient_id"]][k]) for r in rs])
        body.append([name, str(len(rs)), f"{np.median(first):.0f} ({first.min()}-{first.max()})",
                     f"{share(lambda r: r['imaging_data']['field_strength'] == 3.0):.2f}", man,
                     f"{share(lambda r: r['clinical_data']['menopausal_status'] is None):.2f}",
                     f"{share(lambda r: r['clinical_data']['breast_density'] is not None):.2f}",
                     f"{share(lambda r: r['primary_lesion']['tumor_subtype'] is None):.2f}",
                     f"{np.mean(pcr):.2f}" if pcr else "-", f"{med('noise'):.3f}", f"{med('motion_max_mm'):.2f}",
                     f"{med('ghost'):.4f}", f"{med('psf_mm'):.2f}"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def save_preview(out_dir, seed: int = 0, scale: str = "small", cases: int = 40) -> Path:
    """PNG with one case per center: pre-contrast, first post-contrast, subtraction and mask
    overlay through the tumour centre, and the mean curves of tumour, parenchyma and blood
    (heart/vessels) over acquisition time (solid: rendered image, dashed: noise-free)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pcs = draw_cases(cases, seed, scale)
    first = {}
    for p in pcs:
        first.setdefault(p.spec.center, p)
    picks = [first[c] for c in CENTERS if c in first]
    fig, axes = plt.subplots(len(picks), 5, figsize=(17, 3.5 * len(picks)), squeeze=False)
    for row, pc in zip(axes, picks):
        r = render_case(pc.spec)
        ph = [x.astype(np.float32) for x in r.phases]
        k = int(np.argwhere(r.mask).mean(0)[2]) if r.mask.any() else r.mask.shape[2] // 2
        hi = float(np.percentile(ph[1], 99.5))
        sub = ph[1] - ph[0]
        tiles = [(ph[0], "pre-contrast", (0, hi)), (ph[1], "1st post-contrast", (0, hi)),
                 (sub, "subtraction 1-0", (0, float(np.percentile(sub, 99.9)))),
                 (ph[1], "mask on post-contrast", (0, hi))]
        s = pc.spec
        for a, (img, title, (lo, top)) in zip(row, tiles):
            a.imshow(img[:, :, k].T, cmap="gray", vmin=lo, vmax=top, interpolation="nearest")
            if title.startswith("mask"):
                a.contour(r.mask[:, :, k].T, [0.5], colors="r", linewidths=0.8)
            a.set_title(f"{s.patient_id} {s.view} | {title}", fontsize=8)
            a.axis("off")
        t = np.asarray(s.times_s)
        regions = {"tumour": r.mask > 0, "parenchyma": r.labels == LABELS["fgt"],
                   "heart/vessels": r.labels == LABELS["blood"]}
        cleans = r.stats["clean_curves"].values()
        for (name, reg), col, clean in zip(regions.items(), ("r", "g", "b"), cleans):
            if reg.any():
                row[4].plot(t, [float(x[reg].mean()) for x in ph], "-o", color=col, ms=3, label=name)
                row[4].plot(t, clean, "--", color=col, lw=0.8)
        row[4].set_xlabel("acquisition time (s)", fontsize=8)
        row[4].set_title(f"{s.lesion.curve} tumour, {s.field_strength:g} T, "
                         f"{'fat-sat' if s.fat_suppressed else 'no fat-sat'}", fontsize=8)
        row[4].legend(fontsize=7)
        row[4].tick_params(labelsize=7)
    fig.tight_layout()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "phantom_preview.png"
    import io as _io
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    io.atomic_write_bytes(path, buf.getvalue())
    return path
