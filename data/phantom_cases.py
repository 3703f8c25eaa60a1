"""Case drawing of the synthetic MAMA-MIA-like dataset: every random choice of a case, no rendering.

Each case is drawn from ``SeedSequence([seed, center_code, k])``: clinical record, acquisition,
anatomy, lesion and pCR label, then the field of view; the result (:class:`PhantomCase`) holds the
render description (:class:`data.phantom_spec.CaseSpec`), the clinical record as written and the
latent variables the labels were generated from.

How every label is generated (per case, from ``SeedSequence([seed, center_code, k])``)
---------------------------------------------------------------------------------------
1. age ~ Normal(48.5, 10.5) truncated to [21, 77], rounded.
2. menopause (latent): age < 40 -> pre; age > 58 -> post; otherwise post with probability
   sigmoid((age - 51) / 2), else peri with probability 0.35 when age >= 45, else pre.
   Reported ``menopausal_status``: missing with a per-center probability; ISPY1/ISPY2 write long
   strings ('pre (...)', 'peri (...)', 'post (...)') with probability 0.6; peri is always long.
3. density (latent, drives the amount of fibroglandular tissue for every case):
   score = -0.045 (age - 48) + Normal(0, 1), cut at -1.28 / 0 / 1.28 -> a / b / c / d.
   Reported ``breast_density`` for DUKE cases only (85 % of them), missing otherwise.
4. subtype ~ per-center categorical (:data:`CENTERS`), written as ``tumor_subtype`` (2 % missing).
5. lesion given subtype: size_z ~ Normal(SIZE_SHIFT[subtype], 1); diameter = 22 mm *
   exp(0.42 size_z) clipped to [5, 60] mm; curve type ~ CURVE_P[family] (luminal / her2 /
   triple_negative); Ktrans, ve, vp drawn for that curve type at the case's acquisition times
   (:func:`data.phantom_kinetics.draw_tumour_kinetics`); necrotic core with probability
   sigmoid(-1.4 + 1.1 size_z + 0.9 [triple negative]), core radius fraction nec ~ U(0.35, 0.7)
   (necrotic volume fraction ~ nec^3); rim (heterogeneity) ~ U(0, 0.5) + 0.3 [triple
   negative] + 0.2 [necrotic], clipped to 1; spiculated with probability 0.45 (luminal) /
   0.2 (her2) / 0.1 (triple negative); 2 or 3 foci with probability 0.10 / 0.05; 1-4
   satellite nodules with probability 0.2 (foci and satellites are part of the mask).
6. pCR: logit = B0 + B_SUBTYPE[subtype] - 0.6 size_z + 0.5 z(log Ktrans) + 0.4 [washout]
   - 4.0 nec^3 - 0.5 rim - 0.15 (age - 48) / 10 + eps, eps ~ Normal(0, 0.8), B0 = -0.85;
   pcr ~ Bernoulli(sigmoid(logit)); z(log Ktrans) = (log Ktrans + 1.35) / 0.6.
   B_SUBTYPE: luminal -1.0, luminal_a -1.3, luminal_b -0.7, her2_enriched +0.5,
   her2_pure +1.0, triple_negative +0.6. So HER2+ and triple-negative, small, fast-exchange
   (washout, high Ktrans), non-necrotic, homogeneous tumours respond more often. 30 % positive
   (0.300 and 0.314 on two sets of 4000 draws). Reported ``pcr`` is null for 3 % of cases.
7. The noise-free part of the logit (``logit_det``) and ``p_pcr`` = E[sigmoid(logit)] over eps
   are stored for every case in ``phantom_latent`` (JSON) and ``phantom_latents.csv``:
   thresholding ``p_pcr`` at 0.3 is the oracle, balanced accuracy 0.715-0.717 on those draws.
   Subtype and age are in the JSON; size, kinetics, necrosis and rim are visible in the images,
   so the oracle is the ceiling of an image + clinical model ("learnable but hard").

Acquisition per case: phase count drawn from the real per-center counts, pre-contrast at 0 s,
first post-contrast ~140-200 s, then ~80-150 s apart; injection 1.2-2 min before the first
post-contrast phase. Small scale (default) keeps the real spacings but crops the field of view
(<= 120 mm per axis) and shrinks the body by 0.55; lesions keep their drawn size unless they do
not fit the breast (at small scale most lesions above ~25 mm are shrunk to fit, so the rendered
size saturates; ``rendered_diameter_mm`` records it); full scale uses the real matrices
(e.g. 448/512^2 x 168 DUKE, 256^2 x 60 ISPY1; ~5 GB of memory per DUKE case, one worker).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from data.phantom_body import thorax_surface
from data.phantom_centers import CENTERS, Center, allocate_centers, patient_ids
from data.phantom_kinetics import CURVE_TYPES, draw_tumour_kinetics, t10_ms
from data.phantom_lesion import lesion_centre
from data.phantom_look import draw_look
from data.phantom_spec import Anatomy, CaseSpec, Lesion, world_extent_to_shape


SCALES = ("small", "full")
ANAT_SCALE = {"small": 0.55, "full": 1.0}
LESION_SCALE = {"small": 1.0, "full": 1.0}


SIZE_SHIFT = {"luminal": -0.2, "luminal_a": -0.3, "luminal_b": -0.1, "her2_enriched": 0.1,
              "her2_pure": 0.2, "triple_negative": 0.3}
CURVE_P = {"luminal": (0.4, 0.35, 0.25), "her2": (0.15, 0.35, 0.5), "triple_negative": (0.2, 0.35, 0.45)}
B0 = -0.85
B_SUBTYPE = {"luminal": -1.0, "luminal_a": -1.3, "luminal_b": -0.7, "her2_enriched": 0.5,
             "her2_pure": 1.0, "triple_negative": 0.6}
EPS_SD = 0.8
MENO_LONG = {
    "pre": "pre (<6 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
    "peri": "peri (6-12 months since LMP AND no prior bilateral ovariectomy AND not on estrogen replacement)",
    "post": "post (prior bilateral ovariectomy OR >12 months since LMP with no prior hysterectomy)",
}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _family(subtype: str) -> str:
    return "her2" if subtype.startswith("her2") else ("triple_negative" if subtype == "triple_negative"
                                                       else "luminal")


@dataclass(frozen=True)
class PhantomCase:
    """One drawn case: the render description plus its clinical record and latent variables."""

    spec: CaseSpec
    clinical: dict              # the JSON clinical_data block as written
    subtype_reported: str | None
    pcr_reported: int | None
    scanner: tuple
    site: str | None
    latent: dict                # everything the labels were generated from


def _pick(rng, options: dict):
    keys = list(options)
    p = np.asarray([options[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _draw_clinical(rng, c: Center) -> dict:
    age = 0
    while not 21 <= age <= 77:
        age = int(round(rng.normal(48.5, 10.5)))
    if age < 40:
        meno = "pre"
    elif age > 58:
        meno = "post"
    elif rng.random() < _sigmoid((age - 51) / 2.0):
        meno = "post"
    else:
        meno = "peri" if (age >= 45 and rng.random() < 0.35) else "pre"
    if rng.random() < c.meno_missing_p:
        meno_txt = None
    elif meno == "peri" or rng.random() < c.meno_long_p:
        meno_txt = MENO_LONG[meno]
    else:
        meno_txt = meno
    score = -0.045 * (age - 48) + rng.normal()
    density = "abcd"[int(np.searchsorted([-1.28, 0.0, 1.28], score))]
    density_txt = density if (c.name == "DUKE" and rng.random() < 0.85) else None
    subtype = _pick(rng, c.subtypes)
    return dict(age=age, menopause=meno, menopause_txt=meno_txt, density=density,
                density_txt=density_txt, subtype=subtype)


def _draw_acquisition(rng, c: Center) -> dict:
    n_ph = _pick(rng, c.phases)
    first, step = rng.uniform(*c.first_post_s), rng.uniform(*c.interval_s)
    times = [0] + [int(round(first + i * step + rng.normal(0, 3))) for i in range(n_ph - 1)]
    manu, model, field = c.scanners[int(rng.integers(len(c.scanners)))]
    tr = rng.uniform(4.5, 7.0) if field < 2 else rng.uniform(4.0, 5.5)
    ip, sl = float(rng.choice(c.inplane)), float(rng.choice(c.slice_mm))
    return dict(times=tuple(times), injection_s=float(first - 60 * rng.uniform(1.2, 2.0)),
                manufacturer=manu, model=model, field=float(field), tr=round(float(tr), 3),
                te=round(float(rng.uniform(1.3, 2.7)), 3), flip=float(rng.uniform(*c.flip)),
                fat_sat=bool(rng.random() < c.fat_sat_p), noise=float(rng.uniform(*c.noise)),
                motion=float(rng.uniform(*c.motion)), ghost=float(rng.uniform(*c.ghost)),
                dose=float(rng.uniform(*c.dose)), bias=float(rng.uniform(0.08, 0.2)),
                gain=float(rng.uniform(1500, 2500)), spacing=(ip, ip, sl),
                bilateral=bool(rng.random() < c.bilateral_p), side=int(rng.choice([-1, 1])),
                site=c.sites[int(rng.integers(len(c.sites)))],
                tilt=tuple(float(x) for x in rng.normal(0, 1.5 if c.name == "ISPY2" else 0.5, 3)))


BPE_KTRANS = ((0.004, 0.01), (0.01, 0.025), (0.025, 0.045), (0.045, 0.08))  # minimal..marked


def _draw_anatomy(rng, clin: dict, scale: str) -> Anatomy:
    s = ANAT_SCALE[scale]
    a, b = rng.uniform(150, 175), rng.uniform(95, 120)
    pec, rib = rng.uniform(8, 15), rng.uniform(10, 14)
    hr = (rng.uniform(48, 60), rng.uniform(36, 46), rng.uniform(45, 55))
    pre = clin["menopause"] != "post"
    level = int(rng.choice(4, p=[0.2, 0.35, 0.3, 0.15] if pre else [0.5, 0.35, 0.12, 0.03]))
    return Anatomy(
        thorax_a=s * a, thorax_b=s * b, breast_x=s * a * (0.55 if scale == "full" else 0.47),
        breast_r=(s * rng.uniform(55, 70), s * rng.uniform(55, 115), s * rng.uniform(55, 70)),
        breast_w=s * rng.normal(0, 6), pectoral_mm=s * pec, rib_layer_mm=s * rib,
        heart_center=(-s * rng.uniform(15, 35), s * (2.5 + pec + rib + rng.uniform(10, 60) + hr[1]),
                      s * rng.uniform(-140, -70)),
        heart_r=tuple(s * x for x in hr), skin_mm=float(rng.uniform(1.4, 2.2)),
        subcut_mm=s * rng.uniform(3, 8), density=clin["density"],
        bpe=float(rng.uniform(*BPE_KTRANS[level])), n_vessels=int(rng.integers(2, 6)))


def _draw_lesion(rng, clin: dict, acq: dict) -> tuple[Lesion, float]:
    sub = clin["subtype"]
    fam = _family(sub)
    size_z = float(rng.normal(SIZE_SHIFT[sub], 1.0))
    curve = CURVE_TYPES[int(rng.choice(3, p=CURVE_P[fam]))]
    kt, ve, vp = draw_tumour_kinetics(rng, curve, acq["times"], acq["injection_s"],
                                         t10_ms("tumour", acq["field"]), acq["tr"], acq["flip"])
    tn = float(sub == "triple_negative")
    necrotic = rng.random() < _sigmoid(-1.4 + 1.1 * size_z + 0.9 * tn)
    nec = float(rng.uniform(0.35, 0.7)) if necrotic else 0.0
    rim = float(min(1.0, rng.uniform(0, 0.5) + 0.3 * tn + 0.2 * necrotic))
    spic = bool(rng.random() < {"luminal": 0.45, "her2": 0.2, "triple_negative": 0.1}[fam])
    n_foci = int(rng.choice([1, 2, 3], p=[0.85, 0.1, 0.05]))
    n_sat = int(rng.integers(1, 5)) if rng.random() < 0.2 else 0
    lesion = Lesion(diameter_mm=float(np.clip(22.0 * math.exp(0.42 * size_z), 5, 60)), n_foci=n_foci,
                       n_satellites=n_sat, spiculated=spic, necrosis=nec, curve=curve, ktrans=kt, ve=ve,
                       vp=vp, rim=rim, position=(float(rng.uniform(-1, 1)), float(rng.uniform(0, 1)),
                                                 float(rng.uniform(-1, 1))))
    return lesion, size_z


def pcr_logit(subtype: str, size_z: float, ktrans: float, curve: str, necrosis: float, rim: float,
              age: float) -> float:
    """Noise-free part of the pCR logit (module docstring, step 6)."""
    return (B0 + B_SUBTYPE[subtype] - 0.6 * size_z + 0.5 * (math.log(ktrans) + 1.35) / 0.6
            + 0.4 * (curve == "washout") - 4.0 * necrosis ** 3 - 0.5 * rim - 0.15 * (age - 48) / 10)


def pcr_probability(logit_det: float) -> float:
    """E[sigmoid(logit_det + eps)], eps ~ N(0, EPS_SD^2), by Gauss-Hermite quadrature."""
    x, wts = _GH
    return float((wts * _sigmoid(logit_det + EPS_SD * x)).sum() / wts.sum())


_GH = np.polynomial.hermite_e.hermegauss(24)


def draw_case(seed: int, center: str, k: int, patient_id: str, scale: str = "small") -> PhantomCase:
    """Draw every random choice of case ``k`` of ``center`` (no rendering)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if center not in CENTERS:
        raise ValueError(f"unknown center {center!r}; expected one of {list(CENTERS)}")
    c = CENTERS[center]
    rng = np.random.default_rng(np.random.SeedSequence([seed, c.code, k]))
    clin = _draw_clinical(rng, c)
    acq = _draw_acquisition(rng, c)
    anat = _draw_anatomy(rng, clin, scale)
    lesion, size_z = _draw_lesion(rng, clin, acq)
    logit = pcr_logit(clin["subtype"], size_z, lesion.ktrans, lesion.curve, lesion.necrosis, lesion.rim,
                      clin["age"])
    pcr = int(rng.random() < _sigmoid(logit + EPS_SD * rng.normal()))
    pcr_rep = None if rng.random() < 0.03 else pcr
    sub_rep = None if rng.random() < 0.02 else clin["subtype"]

    # field of view: real matrix (full) or a cropped FOV (small), anterior edge just past the apex
    bil = acq["bilateral"]
    if scale == "full":
        n_ip, n_sl = c.matrix
        if c.name == "DUKE":
            n_ip = int(rng.choice([448, 512]))
        ip, sl = acq["spacing"][0], acq["spacing"][2]
        fov = (n_ip * ip, n_ip * ip, n_sl * sl) if c.view == "axial" else (n_sl * sl, n_ip * ip, n_ip * ip)
    else:
        fov = (120.0, 96.0, 64.0) if (bil and c.name != "DUKE") else c.small_fov
    shape = world_extent_to_shape(c.view, fov, acq["spacing"])
    vt, _ = thorax_surface(np.float32(anat.breast_x), anat)
    front = float(vt) + anat.breast_r[1] + rng.uniform(5, 12)
    cx = rng.normal(0, 3) if bil else acq["side"] * anat.breast_x + rng.normal(0, 4)
    centre = (float(cx), front - fov[1] / 2, anat.breast_w + float(rng.normal(0, 4)))
    spec = CaseSpec(
        patient_id=patient_id, center=center, render_seed=(seed, c.code, k, 1), view=c.view,
        bilateral=bool(bil), side=acq["side"], spacing=acq["spacing"], shape=shape, fov_center=(0, 0, 0),
        tilt_deg=acq["tilt"], field_strength=acq["field"], tr_ms=acq["tr"], te_ms=acq["te"],
        flip_deg=acq["flip"], fat_suppressed=acq["fat_sat"], times_s=acq["times"],
        injection_s=acq["injection_s"], dose=acq["dose"], noise=acq["noise"], motion_mm=acq["motion"],
        ghost=acq["ghost"], bias=acq["bias"], gain=acq["gain"], anatomy=anat, lesion=lesion,
        lesion_scale=LESION_SCALE[scale])
    # keep the main focus inside the field of view (real scans are planned around the lesion)
    les_c, les_r = lesion_centre(spec)
    room = np.asarray(fov) / 2 - 1.3 * les_r - 3.0
    centre = tuple(float(np.clip(x, lc - max(r, 0.0), lc + max(r, 0.0)))
                   for x, lc, r in zip(centre, les_c, room))
    spec = dataclasses.replace(spec, fov_center=centre)
    spec = dataclasses.replace(spec, look=draw_look(spec))      # appearance: its own random stream
    latent = dict(
        age=clin["age"], menopause=clin["menopause"], density=clin["density"], subtype=clin["subtype"],
        size_z=round(size_z, 4), diameter_mm=round(lesion.diameter_mm, 2), curve=lesion.curve,
        ktrans=round(lesion.ktrans, 4), ve=round(lesion.ve, 4), vp=round(lesion.vp, 4),
        kep=round(lesion.ktrans / lesion.ve, 4), necrosis=round(lesion.necrosis, 4),
        rim=round(lesion.rim, 4), spiculated=lesion.spiculated, n_foci=lesion.n_foci,
        n_satellites=lesion.n_satellites, bpe_ktrans=round(anat.bpe, 4),
        logit_det=round(logit, 4), p_pcr=round(pcr_probability(logit), 4), pcr=pcr,
        noise=round(acq["noise"], 4), motion_mm=round(acq["motion"], 3), ghost=round(acq["ghost"], 4),
        dose=round(acq["dose"], 3), fat_suppressed=acq["fat_sat"], flip_deg=round(acq["flip"], 2))
    clinical = dict(age=clin["age"], menopausal_status=clin["menopause_txt"],
                    breast_density=clin["density_txt"])
    return PhantomCase(spec=spec, clinical=clinical, subtype_reported=sub_rep, pcr_reported=pcr_rep,
                       scanner=(acq["manufacturer"], acq["model"]), site=acq["site"], latent=latent)


def draw_cases(cases: int, seed: int = 0, scale: str = "small") -> list[PhantomCase]:
    """All cases of a dataset of ``cases`` cases, in patient-id order, without rendering."""
    out = []
    for center, count in allocate_centers(cases).items():
        for k, pid in enumerate(patient_ids(center, count, seed)):
            out.append(draw_case(seed, center, k, pid, scale))
    return out
