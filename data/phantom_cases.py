"""Case drawing of the synthetic MAMA-MIA-like dataset: every random choice of a case, no rendering.

Each case is drawn from ``SeedSequence([seed, center_code, k])``: clinical record, acquisition,
anatomy, lesion and pCR label, then the field of view; the result (:class:`PhantomCase`) holds the
render description (:class:`data.phantom_spec.CaseSpec`), the clinical record as written and the
latent variables the labels were generated from.

How every label is generated (per case, from ``SeedSequence([seed, center_code, k])``)
---------------------------------------------------------------------------------------
Per-center numbers are in :data:`data.phantom_centers.CENTERS` (facts in that module's docstring).

1. age ~ Normal(48.5, 10.5) truncated to [21, 77], rounded.
2. menopause (latent): age < 40 -> pre; age > 58 -> post; otherwise post with probability
   sigmoid((age - 51) / 2), else peri with probability 0.35 when age >= 45, else pre.
   Reported ``menopausal_status``: missing for every ISPY1 and NACT case, 18 % of ISPY2 and 5 % of
   DUKE; ISPY2 writes long strings ('pre (...)', 'peri (...)', 'post (...)') with probability
   0.6; peri is always long.
3. density (latent, drives the amount of fibroglandular tissue for every case):
   score = -0.045 (age - 48) + Normal(0, 1), cut at DENSITY_CUTS -1.72 / -0.40 / 0.93 -> a / b / c
   / d (about 6 / 30 / 44 / 20 %). Reported ``breast_density`` for 20 % of DUKE cases only
   (so c > b > d > a there), missing otherwise.
4. subtype ~ per-center categorical. DUKE, ISPY1 and NACT use the label ``luminal``, ISPY2
   ``luminal_a`` / ``luminal_b``. Written as ``tumor_subtype``, missing for 28 % of NACT and 2 % of
   the other cases. Receptor status follows the subtype (RECEPTORS):

   =================================  ====  ======  ===============================
   subtype                            hr    her2    er, pr
   =================================  ====  ======  ===============================
   luminal, luminal_a, luminal_b      1     0       (1, 1) 70 %, (1, 0) 22 %, (0, 1) 8 %
   her2_enriched (HER2+, HR+)         1     1       as above
   her2_pure (HER2+, HR-)             0     1       (0, 0)
   triple_negative                    0     0       (0, 0)
   =================================  ====  ======  ===============================

   so hr = max(er, pr) always, and "HR- or HER2+" is "not luminal". The receptor fields are
   written to the clinical table only (not to the JSON, as in the real download), empty where
   the subtype is missing. Nottingham grade 1/2/3 ~ GRADE_P[subtype] (mostly 3 in triple-negative
   and HER2+ tumours, 1-2 in luminal ones), missing with a per-center probability; race from a
   per-center categorical (missing for NACT). Neither enters the pCR model.
5. lesion given subtype: size_z ~ Normal(SIZE_SHIFT[subtype], 1); diameter = 22 mm *
   exp(0.42 size_z) clipped to [5, 60] mm; kinetic class ~ CURVE_P[family] (luminal / her2 /
   triple_negative); Ktrans, ve, vp drawn so that the curve on a DUKE-like early protocol
   (REFERENCE_TIMES, injection at 35 s) is of that class
   (:func:`data.phantom_kinetics.draw_tumour_kinetics`); ``curve`` is the type the case's own
   acquisition times show (ISPY1/NACT sample 6-10 min after injection: mostly plateau/washout);
   necrotic core with probability sigmoid(-1.4 + 1.1 size_z + 0.9 [triple negative]), core radius
   fraction nec ~ U(0.35, 0.7) (necrotic volume fraction ~ nec^3); rim (heterogeneity) ~
   U(0, 0.5) + 0.3 [triple negative] + 0.2 [necrotic], clipped to 1; spiculated with probability
   0.45 (luminal) / 0.2 (her2) / 0.1 (triple negative); 2 or 3 foci with probability 0.10 / 0.05;
   1-4 satellite nodules with probability 0.2 (foci and satellites are part of the mask).
6. pCR: logit = B0 + pcr_offset[center] + B_SUBTYPE[subtype] - 0.6 size_z + 0.5 z(log Ktrans)
   + 0.4 [washout class] - 4.0 nec^3 - 0.5 rim - 0.15 (age - 48) / 10 + eps, eps ~ Normal(0, 0.8),
   B0 = -0.85; pcr ~ Bernoulli(sigmoid(logit)); z(log Ktrans) = (log Ktrans + 1.35) / 0.6.
   B_SUBTYPE: luminal -0.64, luminal_a -0.94, luminal_b -0.34, her2_enriched +0.49, her2_pure
   +1.09, triple_negative +0.61; pcr_offset: DUKE -0.34, ISPY1 -0.22, ISPY2 0, NACT -0.98. Both
   were fitted (alternating logit updates on the expected rates of 6000 draws) to MAMA-MIA's pCR
   rates by subtype group (luminal 0.20, HER2+ 0.47, triple negative 0.37) and by center (DUKE
   0.23, ISPY1 0.29, ISPY2 0.32, NACT 0.17). On two sets of 4000 draws: pCR 0.300 / 0.306;
   luminal 0.20 / 0.19, HER2+ 0.44 / 0.44, triple negative 0.34 / 0.36; DUKE 0.29 / 0.24, ISPY1
   0.30 / 0.32, ISPY2 0.31 / 0.33, NACT 0.17 / 0.18. The receptor rule "HR- or HER2+ => pCR" has
   balanced accuracy 0.61 / 0.62 (pCR 0.38-0.40 when HR- or HER2+, 0.19-0.20 when HR+/HER2-;
   the field's 0.57 vs 0.15 cannot hold together with the subtype rates above, which bound the
   first figure by 0.47). Reported ``pcr`` is null for 3 % of cases.
7. The noise-free part of the logit (``logit_det``) and ``p_pcr`` = E[sigmoid(logit)] over eps
   are stored for every case in ``phantom_latent`` (JSON) and ``phantom_latents.csv``:
   thresholding ``p_pcr`` at 0.3 is the oracle, balanced accuracy 0.70-0.71 on those draws,
   above the receptor rule: size, kinetics, necrosis and rim are visible in the images and carry
   signal beyond the subtype, so the oracle is the ceiling of an image + clinical model
   ("learnable but hard").

Acquisition per case: phase count drawn from the real per-center counts, pre-contrast at 0 s,
first post-contrast and the interval between later phases from the center's ranges (DUKE
165-210 s, 10 % 210-300 s, then 110-130 s apart; ISPY1 370-420 s, 310-350 s apart; ISPY2
110-180 s, 85-95 s apart; NACT 380-600 s, 340-380 s apart); contrast injected 20-50 s after the
start of the pre-contrast scan, so the enhancement at each phase follows from these times through
the kinetic model. Scanner (manufacturer, model, field strength) from the center's shares. Quality
causes, log-normal per center and clipped to QUALITY_CLIP: Rician noise sigma (relative to fat),
rigid motion scale (mm), ghost amplitude, in-plane point-spread sigma ``psf_mm``; ISPY1/ISPY2 have
higher medians than DUKE/NACT, and lower contrast dose. The latents record each cause
(``noise``, ``noise_sigma`` = noise x gain in stored intensity units, ``motion_mm``, ``ghost``,
``psf_mm``); the realised largest inter-phase translation is recorded by the renderer as
``motion_max_mm``. Small scale (default) keeps the
real spacings but crops the field of view (<= 120 mm per axis) and shrinks the body by 0.55;
lesions keep their drawn size unless they do not fit the breast (at small scale most lesions
above ~25 mm are shrunk to fit, so the rendered size saturates; ``rendered_diameter_mm`` records
it); full scale uses the real matrices (e.g. 448/512^2 x 168 DUKE, 256^2 x 60 ISPY1; ~5 GB of
memory per DUKE case, one worker).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from data.phantom_body import heart_front, thorax_surface
from data.phantom_centers import CENTERS, Center, allocate_centers, patient_ids
from data.phantom_kinetics import CURVE_TYPES, curve_type, draw_tumour_kinetics, enhancement_curve, t10_ms
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
B_SUBTYPE = {"luminal": -0.64, "luminal_a": -0.94, "luminal_b": -0.34, "her2_enriched": 0.49,
             "her2_pure": 1.09, "triple_negative": 0.61}
EPS_SD = 0.8
# (hr, her2) per subtype label; er/pr among HR+ cases (phantom's choice: ER+PR+ most, ER-PR+ rare)
RECEPTORS = {"luminal": (1, 0), "luminal_a": (1, 0), "luminal_b": (1, 0), "her2_enriched": (1, 1),
             "her2_pure": (0, 1), "triple_negative": (0, 0)}
ER_PR_GIVEN_HR = {(1, 1): 0.70, (1, 0): 0.22, (0, 1): 0.08}
# Nottingham grade 1/2/3 per subtype: higher in HER2+ and triple-negative tumours
GRADE_P = {"luminal": (0.2, 0.5, 0.3), "luminal_a": (0.35, 0.5, 0.15), "luminal_b": (0.1, 0.45, 0.45),
           "her2_enriched": (0.05, 0.4, 0.55), "her2_pure": (0.03, 0.32, 0.65),
           "triple_negative": (0.02, 0.18, 0.8)}
# latent density score cut points: a 6 %, b 30 %, c 44 %, d 20 % (DUKE's reported c > b > d > a)
DENSITY_CUTS = (-1.72, -0.40, 0.93)
# the kinetic class of a tumour is the curve type it shows on a DUKE-like early protocol
REFERENCE_TIMES, REFERENCE_INJECTION_S = (0, 180, 300, 420), 35.0
INJECTION_S = (20.0, 50.0)   # contrast injection, seconds after the start of the pre-contrast scan
# clipping of the log-normal quality causes (noise: sigma/fat signal; motion, psf: mm)
QUALITY_CLIP = {"noise": (0.006, 0.15), "motion": (0.02, 3.0), "ghost": (0.002, 0.25), "psf": (0.2, 2.5)}
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
    table: dict                 # fields of the clinical table only (receptors, grade, race), as written


def _pick(rng, options: dict):
    keys = list(options)
    p = np.asarray([options[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _lognormal(rng, median_sd: tuple, lo: float, hi: float) -> float:
    median, sd = median_sd
    return float(np.clip(median * math.exp(sd * rng.normal()), lo, hi))


def receptors(rng, subtype: str) -> dict:
    """hr, er, pr, her2 (0/1) of a case of this subtype (module docstring, step 4)."""
    hr, her2 = RECEPTORS[subtype]
    er, pr = _pick(rng, ER_PR_GIVEN_HR) if hr else (0, 0)
    return dict(hr=hr, er=er, pr=pr, her2=her2)


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
    density = "abcd"[int(np.searchsorted(DENSITY_CUTS, score))]
    density_txt = density if rng.random() < c.density_report_p else None
    subtype = _pick(rng, c.subtypes)
    rec = receptors(rng, subtype)
    grade = int(rng.choice(3, p=GRADE_P[subtype])) + 1
    return dict(age=age, menopause=meno, menopause_txt=meno_txt, density=density,
                density_txt=density_txt, subtype=subtype, grade=grade,
                grade_txt=None if rng.random() < c.grade_missing_p else grade,
                race=_pick(rng, c.race), **rec)


def _draw_acquisition(rng, c: Center) -> dict:
    n_ph = _pick(rng, c.phases)
    first = rng.uniform(*(c.late_first_s if rng.random() < c.late_first_p else c.first_post_s))
    step = rng.uniform(*c.interval_s)
    times = [0] + [int(round(first + i * step + rng.normal(0, 3))) for i in range(n_ph - 1)]
    manu, model, field = _pick(rng, c.scanners)
    tr = rng.uniform(4.5, 7.0) if field < 2 else rng.uniform(4.0, 5.5)
    ip, sl = float(rng.choice(c.inplane)), float(rng.choice(c.slice_mm))
    return dict(times=tuple(times), injection_s=float(rng.uniform(*INJECTION_S)),
                manufacturer=manu, model=model, field=float(field), tr=round(float(tr), 3),
                te=round(float(rng.uniform(1.3, 2.7)), 3), flip=float(rng.uniform(*c.flip)),
                fat_sat=bool(rng.random() < c.fat_sat_p), noise=_lognormal(rng, c.noise, *QUALITY_CLIP["noise"]),
                motion=_lognormal(rng, c.motion, *QUALITY_CLIP["motion"]),
                ghost=_lognormal(rng, c.ghost, *QUALITY_CLIP["ghost"]),
                psf=_lognormal(rng, c.psf, *QUALITY_CLIP["psf"]),
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
        # the heart's anterior surface 5-30 mm behind the inner chest wall (the right ventricle lies
        # just behind the sternum, separated by the thin anterior mediastinum), at both scales
        heart_center=(-s * rng.uniform(15, 35), s * (2.5 + pec + rib + rng.uniform(5, 30)) + heart_front(
            tuple(s * x for x in hr)), s * rng.uniform(-140, -70)),
        heart_r=tuple(s * x for x in hr), skin_mm=float(rng.uniform(1.4, 2.2)),
        subcut_mm=s * rng.uniform(3, 8), density=clin["density"],
        bpe=float(rng.uniform(*BPE_KTRANS[level])), n_vessels=int(rng.integers(2, 6)))


def _draw_lesion(rng, clin: dict, acq: dict) -> tuple[Lesion, float, str]:
    sub = clin["subtype"]
    fam = _family(sub)
    size_z = float(rng.normal(SIZE_SHIFT[sub], 1.0))
    kclass = CURVE_TYPES[int(rng.choice(3, p=CURVE_P[fam]))]
    t10 = t10_ms("tumour", acq["field"])
    kt, ve, vp = draw_tumour_kinetics(rng, kclass, REFERENCE_TIMES, REFERENCE_INJECTION_S, t10, acq["tr"],
                                      acq["flip"])
    # the curve type the case's own acquisition times show (late first phases: more washout)
    curve = curve_type(enhancement_curve(acq["times"], kt, ve, vp, t10, acq["tr"], acq["flip"],
                                         acq["injection_s"]))
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
    return lesion, size_z, kclass


def pcr_logit(subtype: str, size_z: float, ktrans: float, kinetic_class: str, necrosis: float, rim: float,
              age: float, center: str) -> float:
    """Noise-free part of the pCR logit (module docstring, step 6)."""
    return (B0 + CENTERS[center].pcr_offset + B_SUBTYPE[subtype] - 0.6 * size_z + 0.5 * (math.log(ktrans) + 1.35) / 0.6
            + 0.4 * (kinetic_class == "washout") - 4.0 * necrosis ** 3 - 0.5 * rim - 0.15 * (age - 48) / 10)


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
    lesion, size_z, kclass = _draw_lesion(rng, clin, acq)
    logit = pcr_logit(clin["subtype"], size_z, lesion.ktrans, kclass, lesion.necrosis, lesion.rim,
                      clin["age"], center)
    pcr = int(rng.random() < _sigmoid(logit + EPS_SD * rng.normal()))
    pcr_rep = None if rng.random() < 0.03 else pcr
    sub_rep = None if rng.random() < c.subtype_missing_p else clin["subtype"]
    # the table's receptor fields are missing where the subtype is
    table = {k: (clin[k] if sub_rep is not None else None) for k in ("hr", "er", "pr", "her2")}
    table.update(nottingham_grade=clin["grade_txt"], race=clin["race"])

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
        lesion_scale=LESION_SCALE[scale], psf_mm=acq["psf"])
    # keep the main focus inside the field of view (real scans are planned around the lesion)
    les_c, les_r = lesion_centre(spec)
    room = np.asarray(fov) / 2 - 1.3 * les_r - 3.0
    centre = tuple(float(np.clip(x, lc - max(r, 0.0), lc + max(r, 0.0)))
                   for x, lc, r in zip(centre, les_c, room))
    spec = dataclasses.replace(spec, fov_center=centre)
    spec = dataclasses.replace(spec, look=draw_look(spec))      # appearance: its own random stream
    lk = spec.look
    latent = dict(
        age=clin["age"], menopause=clin["menopause"], density=clin["density"], subtype=clin["subtype"],
        hr=clin["hr"], er=clin["er"], pr=clin["pr"], her2=clin["her2"], grade=clin["grade"],
        size_z=round(size_z, 4), diameter_mm=round(lesion.diameter_mm, 2), kinetic_class=kclass, curve=lesion.curve,
        ktrans=round(lesion.ktrans, 4), ve=round(lesion.ve, 4), vp=round(lesion.vp, 4),
        kep=round(lesion.ktrans / lesion.ve, 4), necrosis=round(lesion.necrosis, 4),
        rim=round(lesion.rim, 4), spiculated=lesion.spiculated, n_foci=lesion.n_foci,
        n_satellites=lesion.n_satellites, bpe_ktrans=round(anat.bpe, 4),
        logit_det=round(logit, 4), p_pcr=round(pcr_probability(logit), 4), pcr=pcr,
        noise=round(acq["noise"], 4), noise_sigma=round(acq["noise"] * acq["gain"], 3), motion_mm=round(acq["motion"], 3), ghost=round(acq["ghost"], 4),
        psf_mm=round(acq["psf"], 3), injection_s=round(acq["injection_s"], 1), dose=round(acq["dose"], 3), fat_suppressed=acq["fat_sat"], flip_deg=round(acq["flip"], 2),
        # the appearance draws (data.phantom_look), so studies can relate results to them
        coil=round(lk.coil, 4), coil_depth=round(lk.coil_depth, 4), fat_residual=round(lk.fat_residual, 4),
        nipple_mm=round(lk.nipple_mm, 3), ducts=lk.ducts, chest_curve=round(lk.chest_curve, 6),
        vessel_depth=lk.vessel_depth, gland_detail=round(lk.gland_detail, 4), nme=lk.nme,
        n_nodes=len(lk.nodes))
    clinical = dict(age=clin["age"], menopausal_status=clin["menopause_txt"],
                    breast_density=clin["density_txt"])
    return PhantomCase(spec=spec, clinical=clinical, subtype_reported=sub_rep, pcr_reported=pcr_rep,
                       scanner=(acq["manufacturer"], acq["model"]), site=acq["site"], latent=latent,
                       table=table)


def draw_cases(cases: int, seed: int = 0, scale: str = "small") -> list[PhantomCase]:
    """All cases of a dataset of ``cases`` cases, in patient-id order, without rendering."""
    out = []
    for center, count in allocate_centers(cases).items():
        for k, pid in enumerate(patient_ids(center, count, seed)):
            out.append(draw_case(seed, center, k, pid, scale))
    return out
