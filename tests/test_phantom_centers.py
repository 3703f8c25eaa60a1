"""Generator statistics of the phantom's centers (data/phantom_centers.py, data/phantom_cases.py)
and the clinical table it writes (data/phantom_writer.py).

Statistics are checked on 2000 drawn cases (no rendering, fixed seed) against the facts in the
docstring of data/phantom_centers.py; tolerances are about three binomial standard deviations at
the per-center case counts (DUKE ~390, ISPY1 ~230, ISPY2 ~1300, NACT ~85).
"""
import dataclasses
import json

import numpy as np
import pytest

from data import phantom
from data import phantom_anatomy as pa

N, SEED = 2000, 2026
CENTER_NAMES = ("DUKE", "ISPY1", "ISPY2", "NACT")


@pytest.fixture(scope="module")
def drawn():
    pcs = phantom.draw_cases(N, seed=SEED)
    return {c: [p for p in pcs if p.spec.center == c] for c in CENTER_NAMES}


def _all(drawn):
    return [p for c in CENTER_NAMES for p in drawn[c]]


def _ba(pred, y) -> float:
    pred, y = np.asarray(pred, bool), np.asarray(y, int)
    return 0.5 * (pred[y == 1].mean() + (~pred[y == 0]).mean())


# ----------------------------------------------------------------------------- acquisition times
def test_first_post_contrast_times_and_intervals(drawn):
    first = {c: np.array([p.spec.times_s[1] for p in drawn[c]]) for c in CENTER_NAMES}
    # the drawn range, widened by the 3 s timing jitter (4 sd)
    assert np.all((first["ISPY1"] >= 358) & (first["ISPY1"] <= 432))
    assert np.all((first["NACT"] >= 368) & (first["NACT"] <= 612))
    assert np.all((first["ISPY2"] >= 98) & (first["ISPY2"] <= 192))
    duke_main = (first["DUKE"] >= 153) & (first["DUKE"] <= 222)
    assert 0.85 <= duke_main.mean() < 1.0 and first["DUKE"].max() <= 312   # some later
    gaps = {c: np.concatenate([np.diff(p.spec.times_s[1:]) for p in drawn[c]]) for c in CENTER_NAMES}
    assert 0.95 <= np.mean((gaps["ISPY2"] >= 80) & (gaps["ISPY2"] <= 100))
    assert 0.95 <= np.mean((gaps["DUKE"] >= 105) & (gaps["DUKE"] <= 135))
    assert np.median(gaps["ISPY1"]) > 300 and np.median(gaps["NACT"]) > 330
    for c in CENTER_NAMES:                       # injection after the pre-contrast start, before phase 1
        inj = np.array([p.spec.injection_s for p in drawn[c]])
        assert np.all((inj >= 20) & (inj <= 50) & (inj < first[c]))


def test_enhancement_follows_the_times(drawn):
    """Late first phases (ISPY1, NACT) see less wash-in and more washout than DUKE/ISPY2 for
    tumours of the same kinetic class (the curve type shown at the case's own times)."""
    def enh(p):
        s, les = p.spec, p.spec.lesion
        return pa.enhancement_curve(s.times_s, les.ktrans, les.ve, les.vp, pa.t10_ms("tumour", s.field_strength),
                                    s.tr_ms, s.flip_deg, s.injection_s)
    early = [p for c in ("DUKE", "ISPY2") for p in drawn[c] if p.latent["kinetic_class"] == "washout"]
    late = [p for c in ("ISPY1", "NACT") for p in drawn[c] if p.latent["kinetic_class"] == "washout"]
    assert np.median([enh(p)[1] for p in late]) < np.median([enh(p)[1] for p in early]) - 0.3
    for p in _all(drawn)[::10]:                  # the recorded curve type is what the times show
        assert pa.curve_type(enh(p)) == p.latent["curve"] == p.spec.lesion.curve
    shown = {c: np.mean([p.latent["curve"] == "washout" for p in drawn[c]]) for c in CENTER_NAMES}
    assert min(shown["ISPY1"], shown["NACT"]) > max(shown["DUKE"], shown["ISPY2"]) + 0.15
    cls = {c: np.mean([p.latent["kinetic_class"] == "washout" for p in drawn[c]]) for c in CENTER_NAMES}
    assert max(cls.values()) - min(cls.values()) < 0.15      # the class itself does not follow the times


# ----------------------------------------------------------------------------- records
def test_record_missingness(drawn):
    for c in ("ISPY1", "NACT"):
        assert all(p.clinical["menopausal_status"] is None for p in drawn[c])
        assert all(p.clinical["breast_density"] is None for p in drawn[c])
    assert all(p.clinical["breast_density"] is None for p in drawn["ISPY2"])
    duke = drawn["DUKE"]
    rep = [p for p in duke if p.clinical["breast_density"] is not None]
    assert 0.14 <= len(rep) / len(duke) <= 0.26                          # about a fifth
    assert all(p.clinical["breast_density"] == p.latent["density"] for p in rep)
    counts = {d: sum(p.latent["density"] == d for p in duke) for d in "abcd"}
    assert counts["c"] > counts["b"] > counts["d"] > counts["a"]
    meno = np.mean([p.clinical["menopausal_status"] is None for p in drawn["ISPY2"]])
    assert 0.14 <= meno <= 0.22
    assert np.mean([p.clinical["menopausal_status"] is None for p in duke]) < 0.1
    nact = np.mean([p.subtype_reported is None for p in drawn["NACT"]])
    assert 0.15 <= nact <= 0.42
    for c in ("DUKE", "ISPY1", "ISPY2"):
        assert np.mean([p.subtype_reported is None for p in drawn[c]]) < 0.06


def test_subtype_labels_per_center(drawn):
    written = {c: {p.subtype_reported for p in drawn[c]} - {None} for c in CENTER_NAMES}
    others = {"her2_enriched", "her2_pure", "triple_negative"}
    for c in ("DUKE", "ISPY1", "NACT"):
        assert written[c] == {"luminal"} | others
    assert written["ISPY2"] == {"luminal_a", "luminal_b"} | others


def test_scanner_shares(drawn):
    def share(c, pred):
        return np.mean([pred(p) for p in drawn[c]])
    t3 = lambda p: p.spec.field_strength == 3.0
    man = lambda name: (lambda p: p.scanner[0] == name)
    assert 0.42 <= share("DUKE", t3) <= 0.58
    assert {p.scanner[0] for p in drawn["DUKE"]} == {"GE", "SIEMENS"}
    assert {p.scanner[0] for p in drawn["DUKE"] if t3(p)} == {"GE", "SIEMENS"}
    assert share("ISPY1", t3) == 0.0
    assert 0.56 <= share("ISPY1", man("GE")) <= 0.78 and 0.15 <= share("ISPY1", man("SIEMENS")) <= 0.35
    assert 0.02 <= share("ISPY1", man("Philips")) <= 0.14
    assert 0.23 <= share("ISPY2", t3) <= 0.31
    assert 0.57 <= share("ISPY2", man("GE")) <= 0.65 and 0.21 <= share("ISPY2", man("SIEMENS")) <= 0.29
    assert 0.09 <= share("ISPY2", man("Philips")) <= 0.16
    assert {(p.scanner[0], p.spec.field_strength) for p in drawn["NACT"]} == {("GE", 1.5)}


# ----------------------------------------------------------------------------- receptors and pCR
def test_receptors_follow_the_subtype(drawn):
    pcs = _all(drawn)
    for p in pcs:
        lat, t = p.latent, p.table
        assert (lat["hr"], lat["her2"]) == phantom.RECEPTORS[lat["subtype"]]
        assert lat["hr"] == max(lat["er"], lat["pr"])               # HR+ = ER+ or PR+
        assert lat["grade"] in (1, 2, 3)
        if p.subtype_reported is None:
            assert all(t[k] is None for k in ("hr", "er", "pr", "her2"))
        else:
            assert p.subtype_reported == lat["subtype"]
            assert all(t[k] == lat[k] for k in ("hr", "er", "pr", "her2"))
    hrpos = [p.latent for p in pcs if p.latent["hr"]]
    assert 0.64 <= np.mean([x["er"] and x["pr"] for x in hrpos]) <= 0.76
    assert 0.03 <= np.mean([not x["er"] for x in hrpos]) <= 0.13
    grade = {f: np.mean([p.latent["grade"] for p in pcs if p.latent["subtype"] in s])
             for f, s in (("tn", {"triple_negative"}), ("lum", {"luminal", "luminal_a", "luminal_b"}))}
    assert grade["tn"] > grade["lum"] + 0.5
    missing = np.mean([p.table["nottingham_grade"] is None for p in pcs])
    assert 0.1 < missing < 0.6


def test_pcr_rates_by_subtype_group_and_center(drawn):
    pcs = _all(drawn)
    y = np.array([p.latent["pcr"] for p in pcs])
    group = np.array(["her2" if p.latent["her2"] else "tn" if p.latent["subtype"] == "triple_negative"
                      else "luminal" for p in pcs])
    for g, target, tol in (("luminal", 0.20, 0.04), ("her2", 0.47, 0.07), ("tn", 0.37, 0.06)):
        assert abs(y[group == g].mean() - target) <= tol, (g, y[group == g].mean())
    for c, target, tol in (("DUKE", 0.23, 0.07), ("ISPY1", 0.29, 0.09), ("ISPY2", 0.32, 0.04),
                           ("NACT", 0.17, 0.12)):
        rate = np.mean([p.latent["pcr"] for p in drawn[c]])
        assert abs(rate - target) <= tol, (c, rate)
        # the expected rate (the oracle probabilities) is on target more tightly
        assert abs(np.mean([p.latent["p_pcr"] for p in drawn[c]]) - target) <= 0.035, c


def test_receptor_rule_and_oracle(drawn):
    pcs = _all(drawn)
    y = np.array([p.latent["pcr"] for p in pcs])
    rule = np.array([p.latent["hr"] == 0 or p.latent["her2"] == 1 for p in pcs])
    assert 0.58 <= _ba(rule, y) <= 0.66                         # the field's ~0.64
    assert y[rule].mean() > y[~rule].mean() + 0.12
    assert 0.15 <= y[~rule].mean() <= 0.25
    oracle = np.array([p.latent["p_pcr"] for p in pcs]) > 0.3
    assert _ba(oracle, y) > _ba(rule, y) + 0.05                 # the images carry signal beyond it
    # the p_pcr stored is the documented model: recompute it from the latents
    for p in pcs[::97]:
        lat = p.latent
        logit = phantom.pcr_logit(lat["subtype"], lat["size_z"], p.spec.lesion.ktrans, lat["kinetic_class"],
                                  p.spec.lesion.necrosis, p.spec.lesion.rim, lat["age"], p.spec.center)
        assert lat["logit_det"] == pytest.approx(logit, abs=1e-3)
        assert lat["p_pcr"] == pytest.approx(phantom.pcr_probability(logit), abs=1e-3)


# ----------------------------------------------------------------------------- quality causes
@pytest.mark.parametrize("cause", ["noise", "motion_mm", "ghost", "psf_mm"])
def test_quality_causes_ordered_and_overlapping(drawn, cause):
    vals = {c: np.array([p.latent[cause] for p in drawn[c]]) for c in CENTER_NAMES}
    med = {c: float(np.median(v)) for c, v in vals.items()}
    assert min(med["ISPY1"], med["ISPY2"]) > max(med["DUKE"], med["NACT"])     # ISPY worse
    # overlapping: a tenth of the good centers' cases are worse than the median ISPY2 case, and
    # a tenth of ISPY2's are better than the median DUKE case
    good = np.concatenate([vals["DUKE"], vals["NACT"]])
    assert np.mean(good > med["ISPY2"]) > 0.05 and np.mean(vals["ISPY2"] < med["DUKE"]) > 0.05
    spec_field = {"noise": "noise", "motion_mm": "motion_mm", "ghost": "ghost", "psf_mm": "psf_mm"}[cause]
    p = drawn["ISPY2"][0]
    assert getattr(p.spec, spec_field) == pytest.approx(p.latent[cause], rel=1e-2)


def test_contrast_dose_lower_in_ispy(drawn):
    dose = {c: np.median([p.latent["dose"] for p in drawn[c]]) for c in CENTER_NAMES}
    assert max(dose["ISPY1"], dose["ISPY2"]) < min(dose["DUKE"], dose["NACT"])


def test_point_spread_and_realised_motion_in_the_render():
    pc = phantom.draw_case(0, "NACT", 1, "NACT_02")
    still = dataclasses.replace(pc.spec, noise=0.0, ghost=0.0, motion_mm=0.0, bias=0.0)
    sharp = pa.render_case(dataclasses.replace(still, psf_mm=0.3))
    soft = pa.render_case(dataclasses.replace(still, psf_mm=1.4))
    grad = lambda r: float(np.mean(np.abs(np.diff(r.phases[1].astype(np.float32), axis=0))))
    assert grad(soft) < 0.8 * grad(sharp)
    assert sharp.stats["motion_max_mm"] == 0.0
    moved = pa.render_case(dataclasses.replace(still, motion_mm=1.0))
    assert 0.3 < moved.stats["motion_max_mm"] < 6.0


# ----------------------------------------------------------------------------- the clinical table
def read_table(path) -> tuple[list, list[dict]]:
    from openpyxl import load_workbook
    wb = load_workbook(path, read_only=True)
    rows = list(wb[phantom.TABLE_SHEET].iter_rows(values_only=True))
    wb.close()
    return list(rows[0]), [dict(zip(rows[0], r)) for r in rows[1:]]


def test_clinical_table_written_from_draws(tmp_path, drawn):
    pcs = [p for c in CENTER_NAMES for p in drawn[c][:40]]
    path = phantom.write_clinical_table(tmp_path, pcs[::-1])
    assert path == tmp_path / "clinical_and_imaging_info.xlsx"
    header, rows = read_table(path)
    assert tuple(header) == phantom.TABLE_COLUMNS
    assert header[:24] == ["patient_id", "dataset", "site", "age", "menopause", "race", "breast_density", "hr",
                           "er", "pr", "her2", "tumor_subtype", "nottingham_grade", "pcr", "bilateral_mri",
                           "field_strength", "manufacturer", "scanner_model", "echo_time", "repetition_time",
                           "acquisition_times", "num_phases", "pixel_spacing", "slice_thickness"]
    assert [r["patient_id"] for r in rows] == sorted(p.spec.patient_id for p in pcs)
    by_id = {p.spec.patient_id: p for p in pcs}
    for r in rows:
        p = by_id[r["patient_id"]]
        assert r["dataset"] == p.spec.center and r["age"] == p.clinical["age"]
        for k in ("hr", "er", "pr", "her2", "pcr", "bilateral_mri"):
            assert r[k] is None or (type(r[k]) is int and r[k] in (0, 1)), (k, r[k])
        assert r["menopause"] == p.clinical["menopausal_status"]
        assert r["breast_density"] == p.clinical["breast_density"]
        assert r["tumor_subtype"] == p.subtype_reported and r["pcr"] == p.pcr_reported
        assert json.loads(r["acquisition_times"]) == list(p.spec.times_s)
        assert r["num_phases"] == len(p.spec.times_s)
        assert r["pixel_spacing"] == pytest.approx(p.spec.spacing[0])
        assert r["slice_thickness"] == pytest.approx(p.spec.spacing[2])
        assert r["nottingham_grade"] in (None, 1, 2, 3)
    # missing values are empty cells
    assert all(r["menopause"] is None and r["race"] is None for r in rows if r["dataset"] == "NACT")
    assert any(r["hr"] is None for r in rows if r["dataset"] == "NACT")
    assert any(r["site"] is None for r in rows) and any(r["site"] is not None for r in rows)
