"""Tests for nets/pcr_file.py and core.pcr's plain model state: round trips give the same
predictions, and nothing but this format (no pickle, crafted or old) is ever loaded."""
import io
import dataclasses
import json
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.neighbors import KNeighborsClassifier

from core import pcr, pcr_state
from nets import pcr_file
from nets.snn import SNNClassifier
from conftest import pcr_table

FAST = pcr.PipelineConfig(n_select=3, max_candidates=6, rows_per_feature=1)
CLASSIFIERS = {"snn": lambda s: SNNClassifier(hidden=(8, 4), epochs=30, n_models=2, seed=s),
               "logreg": pcr.BASELINES["logreg"],
               "rf": lambda s: RandomForestClassifier(n_estimators=5, random_state=s)}
CONFIG = {"seed": 0, "folds": [0, 1, 2], "snn": {"hidden": [8, 4]}, "centers": None}


def _table(n=60, f=8, seed=0):
    return pcr_table(n, f, seed)


def _records(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"age": None if i % 7 == 0 else float(rng.integers(30, 70)),
             "menopause": ["pre", "post", "unknown"][i % 3],
             "subtype": [None, "luminal", "her2", "triple_negative"][i % 4],
             "density": [None, "a", "b", "c", "d"][i % 5]} for i in range(n)]


@pytest.fixture(scope="module")
def fitted():
    """Cross-validations with and without clinical records (the three classifiers each)."""
    X, y, names = _table()
    fold_of = np.arange(60) % 3
    out = {}
    for clinical in (False, True):
        recs = _records(60) if clinical else None
        cv = pcr.cross_validate(X, y, names, fold_of, range(3), CLASSIFIERS, FAST, recs,
                                ids=[f"P{i:03d}" for i in range(60)])
        out[clinical] = cv
    return X, y, names, fold_of, out


def _model(fitted, classifier="snn", clinical=False, calibrated=True):
    X, y, names, fold_of, cvs = fitted
    cv = cvs[clinical]
    r = pcr.evaluate(cv.oof[classifier], y, fold_of, range(3), shift=cv.shift)
    return pcr.PCRModel(feature_names=names, folds=cv.models, classifier=classifier,
                        temperature=r["temperature"], threshold=r["threshold"], clinical=clinical,
                        settings={"radiomics": {"bin_width": 25.0, "classes": ["shape"]}, "masks": "expert"},
                        calibration=pcr.CalibrationMap.from_dict(r["calibration"]) if calibrated else None)


def _saved(fitted, tmp_path, classifier="snn", clinical=False):
    path = tmp_path / "run" / "pcr_model.pt"
    pcr_file.save_pcr_model(path, _model(fitted, classifier, clinical), CONFIG)
    return path


def _rewrite(src, dst, edit=None, replace=None, drop=()):
    """Copy the archive ``src`` to ``dst`` with the manifest edited, members replaced or dropped."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members[pcr_file.MANIFEST])
    if edit is not None:
        edit(manifest)
    members[pcr_file.MANIFEST] = json.dumps(manifest).encode()
    members.update(replace or {})
    for name in drop:
        members.pop(name)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("classifier", ["snn", "logreg", "rf"])
@pytest.mark.parametrize("clinical", [False, True])
def test_round_trip_predicts_the_same(fitted, tmp_path, classifier, clinical):
    X, y, names, _, _ = fitted
    model = _model(fitted, classifier, clinical)
    path = pcr_file.save_pcr_model(tmp_path / "pcr_model.pt", model, CONFIG)
    expected_draw = torch.manual_seed(7) and torch.rand(3)
    torch.manual_seed(7)
    loaded, config = pcr_file.load_pcr_model(path)
    assert torch.equal(torch.rand(3), expected_draw)  # rebuilding networks leaves torch's stream alone
    assert config == CONFIG and loaded.settings == model.settings
    assert (loaded.classifier, loaded.clinical, loaded.feature_names) == (classifier, clinical, names)
    assert [set(fm.classifiers) for fm in loaded.folds] == [{classifier}] * 3
    # new rows with missing values, columns reordered, unseen and missing clinical values
    rng = np.random.default_rng(11)
    X2 = rng.normal(size=(40, len(names)))
    X2[rng.random(X2.shape) < 0.1] = np.nan
    perm = list(reversed(range(len(names))))
    recs = None
    if clinical:
        recs = _records(40, seed=3)
        recs[0] = {"age": None, "menopause": None, "subtype": "unseen", "density": None}
    for rows, cols, r in [(X, names, _records(60) if clinical else None),
                          (X2[:, perm], [names[i] for i in perm], recs)]:
        s0, l0 = model.predict(rows, cols, r)
        s1, l1 = loaded.predict(rows, cols, r)
        np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(l1, l0)
        assert np.ptp(s0) > 1e-3  # the scores do depend on the rows (the comparison can fail)
    for a, b in zip(model.folds, loaded.folds):
        assert b.pipeline.selected_names == a.pipeline.selected_names and b.prior_logit == a.prior_logit
        assert b.train_ids == a.train_ids and b.pipeline.dropped == a.pipeline.dropped
        np.testing.assert_array_equal(b.pipeline.mean, a.pipeline.mean)
        assert (b.clinical is None) == (not clinical)
        if clinical:
            assert b.clinical.subtypes == a.clinical.subtypes


def test_loaded_classifiers_are_rebuilt_not_unpickled(fitted, tmp_path):
    snn_model, _ = pcr_file.load_pcr_model(_saved(fitted, tmp_path / "a", "snn"))
    lr_model, _ = pcr_file.load_pcr_model(_saved(fitted, tmp_path / "b", "logreg"))
    est = snn_model.folds[0].classifiers["snn"]
    assert isinstance(est, SNNClassifier) and len(est.models_) == 2 and not est.models_[0].training
    assert isinstance(lr_model.folds[0].classifiers["logreg"], pcr_state.LinearClassifier)
    ref = _model(fitted, "snn").folds[0].classifiers["snn"]
    for a, b in zip(ref.models_, est.models_):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)


def test_state_holds_only_json_and_plain_arrays(fitted, tmp_path):
    meta, arrays = pcr_state.model_to_state(_model(fitted, "snn", True), pcr_file.CODECS)
    json.dumps(meta, allow_nan=False)          # raises on anything that is not plain JSON
    assert arrays and all(isinstance(a, np.ndarray) and a.dtype.kind in "fi" for a in arrays.values())
    rebuilt = pcr_state.model_from_state(json.loads(json.dumps(meta)), arrays, pcr_file.CODECS)
    assert rebuilt.folds[0].pipeline.selected_names == _model(fitted).folds[0].pipeline.selected_names
    # the file: a zip of the JSON manifest and .npy arrays that read without pickle
    path = _saved(fitted, tmp_path, "snn", True)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert names[0] == pcr_file.MANIFEST and all(n.startswith("arrays/") and n.endswith(".npy") for n in names[1:])
        assert not any(n.endswith(".pkl") for n in names) and len(names) == 1 + len(arrays)
        manifest = json.loads(zf.read(pcr_file.MANIFEST))
        assert (manifest["format"], manifest["version"]) == ("mamamia-pcr", pcr_file.VERSION)
        for n in names[1:]:
            data = zf.read(n)
            assert data.startswith(b"\x93NUMPY")        # .npy, not a pickle (b"\x80...")
            assert np.load(io.BytesIO(data), allow_pickle=False).dtype.kind in "fi"


def test_same_model_same_bytes_and_mode_follows_umask(fitted, tmp_path):
    model = _model(fitted, "logreg")
    old = os.umask(0o027)
    try:
        a = pcr_file.save_pcr_model(tmp_path / "a.pt", model, CONFIG)
    finally:
        os.umask(old)
    assert a.stat().st_mode & 0o777 == 0o640
    b = pcr_file.save_pcr_model(tmp_path / "b.pt", model, CONFIG)
    assert a.read_bytes() == b.read_bytes()


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(fitted, tmp_path, monkeypatch):
    path = _saved(fitted, tmp_path, "logreg")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pcr_file.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        pcr_file.save_pcr_model(path, _model(fitted, "snn"), CONFIG)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["pcr_model.pt"]


def test_forest_is_stored_as_node_arrays(fitted, tmp_path):
    """The random forest's probabilities equal scikit-learn's to rounding; isotonic and
    uncalibrated (temperature) models round-trip too."""
    X, *_ = fitted
    model = _model(fitted, "rf")
    loaded, _ = pcr_file.load_pcr_model(pcr_file.save_pcr_model(tmp_path / "rf.pt", model, CONFIG))
    ref, est = model.folds[1].classifiers["rf"], loaded.folds[1].classifiers["rf"]
    z = model.folds[1].inputs(X)
    assert isinstance(est, pcr_state.ForestClassifier)
    np.testing.assert_allclose(est.predict_proba(z), ref.predict_proba(z), atol=1e-12)
    for cmap in (pcr.CalibrationMap("isotonic", xs=(-1.0, 2.0), ys=(0.1, 0.7)), None):
        m = dataclasses.replace(_model(fitted, "logreg"), calibration=cmap)
        back, _ = pcr_file.load_pcr_model(pcr_file.save_pcr_model(tmp_path / "m.pt", m, CONFIG))
        assert back.calibration == cmap
        np.testing.assert_allclose(back.predict(X, fitted[2])[0], m.predict(X, fitted[2])[0], atol=1e-12)


def test_clinical_encoder_without_centers_loads_and_inconsistent_centers_are_refused(fitted, tmp_path):
    """Files written before the center columns have no "centers" in the encoder state: they load
    with none; centers that do not match the column names are refused."""
    src = _saved(fitted, tmp_path, "logreg", clinical=True)

    def drop(m):
        for f in m["model"]["folds"]:
            assert f["clinical"].pop("centers") == []

    def extra(m):
        m["model"]["folds"][1]["clinical"]["centers"] = ["NACT"]

    loaded, _ = pcr_file.load_pcr_model(_rewrite(src, tmp_path / "old.pt", drop))
    assert all(fm.clinical.centers == [] for fm in loaded.folds)
    with pytest.raises(ValueError, match="centers"):
        pcr_file.load_pcr_model(_rewrite(src, tmp_path / "bad.pt", extra))


def test_unsupported_classifier_or_config_is_refused_at_save(fitted, tmp_path):
    path = tmp_path / "pcr_model.pt"
    m = _model(fitted, "logreg")
    knn = dataclasses.replace(m, folds=[dataclasses.replace(f, classifiers={"logreg": KNeighborsClassifier()})
                                        for f in m.folds])
    with pytest.raises(ValueError, match="'logreg' .*KNeighborsClassifier.* cannot be written"):
        pcr_file.save_pcr_model(path, knn, CONFIG)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*JSON"):
        pcr_file.save_pcr_model(path, _model(fitted, "logreg"), {"bad": object()})
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- refusals

class _Payload:
    """Unpickling this creates ``marker``: stands for any code a crafted pickle could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_crafted_pickle_is_never_run(tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "pcr_model.pt"
    payload = {"format": "mamamia-pcr", "version": 2, "model": _Payload(marker), "config": {}}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*re-train with train.py --task pcr"):
        pcr_file.load_pcr_model(path)
    assert not marker.exists()
    # the payload is live: an unpickling load would have run it
    if writer == "torch":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_old_pickled_model_file_is_refused_with_retrain_message(fitted, tmp_path):
    path = tmp_path / "pcr_model.pt"
    torch.save({"format": "mamamia-pcr", "version": 1, "model": _model(fitted, "logreg"), "config": {}}, path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*version 1.*re-train with train.py --task pcr"):
        pcr_file.load_pcr_model(path)


def _npy_bytes(a, allow_pickle=False):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def _set(path, value):
    """An edit of the manifest that sets the value at ``path`` (a tuple of keys and indices)."""
    def edit(m):
        for k in path[:-1]:
            m = m[k]
        m[path[-1]] = value
    return edit


MEDIAN = "fold0.pipeline.median"
HEAD_W = "arrays/fold0.classifier.0.head.weight.npy"
OBJECT_NPY = _npy_bytes(np.array([1, 2, 3], object), allow_pickle=True)
# case -> (what the message must say, the rewrite that makes the fault)
BAD_FILES = {
    "wrong format key": ("format 'mamamia-seg'", dict(edit=_set(("format",), "mamamia-seg"))),
    "version 1 key": ("version 1 is not supported.*re-train", dict(edit=_set(("version",), 1))),
    "future version": ("version 4 is not supported", dict(edit=_set(("version",), 4))),
    "bad calibration kind": ("calibration kind must be one of", dict(edit=_set(("model", "calibration"), {
        "kind": "magic", "a": 1.0, "b": 0.0, "xs": [], "ys": []}))),
    "isotonic knots decreasing": ("increasing knots", dict(edit=_set(("model", "calibration"), {
        "kind": "isotonic", "a": 1.0, "b": 0.0, "xs": [1.0, 0.0], "ys": [0.2, 0.3]}))),
    "calibration extra key": (r"unknown keys \['c'\]", dict(edit=_set(("model", "calibration"), {
        "kind": "none", "a": 1.0, "b": 0.0, "xs": [], "ys": [], "c": 1}))),
    "version 2 file": ("version 2 is not supported.*re-train", dict(edit=_set(("version",), 2))),
    "missing config": (r"missing keys \['config'\]", dict(edit=lambda m: m.pop("config"))),
    "unknown top key": (r"unknown keys \['extra'\]", dict(edit=_set(("extra",), 1))),
    "temperature string": ("temperature must be a finite number", dict(edit=_set(("model", "temperature"), "1.0"))),
    "negative temperature": ("temperature must be positive", dict(edit=_set(("model", "temperature"), -1.0))),
    "clinical not bool": ("clinical must be true or false", dict(edit=_set(("model", "clinical"), 1))),
    "no folds": ("folds is empty", dict(edit=_set(("model", "folds"), []))),
    "unknown classifier kind": ("kind 'rf' is not one of",
                                dict(edit=_set(("model", "folds", 0, "classifier", "kind"), "rf"))),
    "snn hidden string": ("hidden sizes must be positive integers",
                          dict(edit=_set(("model", "folds", 0, "classifier", "state", "params", "hidden"), "64"))),
    "selected names swapped": ("do not match selected_names",
                               dict(edit=lambda m: m["model"]["folds"][0]["pipeline"]["selected_names"].reverse())),
    "feature names differ": ("names_in differs", dict(edit=lambda m: m["model"]["feature_names"].append("extra"))),
    "median of the wrong shape": (r"'median' must be float64 of shape \(3,\)",
                                  dict(edit=_set(("arrays", MEDIAN), {"dtype": "<f8", "shape": [99]}),
                                       replace={f"arrays/{MEDIAN}.npy": _npy_bytes(np.zeros(99))})),
    "array unlike its manifest entry": ("the manifest says",
                                        dict(replace={f"arrays/{MEDIAN}.npy": _npy_bytes(np.zeros(99))})),
    "NaN median": ("'median' holds NaN", dict(replace={f"arrays/{MEDIAN}.npy": _npy_bytes(np.full(3, np.nan))})),
    "object array": ("bad array entry", dict(edit=_set(("arrays", MEDIAN), {"dtype": "|O", "shape": [3]}),
                                             replace={f"arrays/{MEDIAN}.npy": OBJECT_NPY})),
    "pickle inside npy": ("Object arrays cannot be loaded", dict(replace={f"arrays/{MEDIAN}.npy": OBJECT_NPY})),
    "array missing": ("missing .*median.npy", dict(drop=[f"arrays/{MEDIAN}.npy"])),
    "undeclared member": (r"unknown \['data.pkl'\]", dict(replace={"data.pkl": b"\x80\x04N."})),
    "snn weight wrong shape": (r"'0.head.weight' must be float32 of shape \(1, 4\)",
                               dict(edit=_set(("arrays", HEAD_W[7:-4]), {"dtype": "<f4", "shape": [1, 3]}),
                                    replace={HEAD_W: _npy_bytes(np.zeros((1, 3), np.float32))})),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_files_are_refused_naming_the_file(fitted, tmp_path, case):
    good = _saved(fitted, tmp_path, "snn")
    says, rewrite = BAD_FILES[case]
    bad = _rewrite(good, tmp_path / "bad.pt", **rewrite)
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": .*" + says):
        pcr_file.load_pcr_model(bad)
    # the same rewrite without the fault loads (the refusal is the fault's, not the rewrite's)
    pcr_file.load_pcr_model(_rewrite(good, tmp_path / "copy.pt"))


def test_truncated_empty_and_foreign_files_are_refused(fitted, tmp_path):
    data = _saved(fitted, tmp_path, "snn").read_bytes()
    zipped_text = tmp_path / "other.zip"
    with zipfile.ZipFile(zipped_text, "w") as zf:
        zf.writestr("readme.txt", "hello")
    cases = {"truncated.pt": data[: len(data) // 2], "tail_cut.pt": data[:-10], "empty.pt": b"",
             "noise.pt": np.random.default_rng(0).bytes(4096), "text.pt": b'{"format": "mamamia-pcr"}',
             "other.zip": zipped_text.read_bytes()}
    for name, payload in cases.items():
        p = tmp_path / name
        p.write_bytes(payload)
        with pytest.raises(ValueError, match=re.escape(str(p))):
            pcr_file.load_pcr_model(p)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        pcr_file.load_pcr_model(tmp_path / "absent.pt")
