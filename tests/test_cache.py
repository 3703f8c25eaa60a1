import dataclasses

import numpy as np
import pytest

from core import planner
from data import cache, mamamia
from data.preprocess import preprocess


def _plan(cases, spacing=(2.0, 2.0, 2.0)):
    fp = cache.compute_fingerprint(cases, [0, 1, 2], workers=1, progress=False)
    return fp, planner.make_plan(fp, channels=(0, 1, 2), spacing=spacing, budget="cpu")


def test_fingerprint_numbers(tiny_dataset):
    cases = mamamia.load_dataset(tiny_dataset)
    fp, _ = _plan(cases)
    assert fp.n_cases == 3 and fp.channel_names == ("0000", "0001", "0002")
    assert fp.spacings[0] == pytest.approx((1.5, 1.5, 2.5))
    # body occupies [2:-2, 2:-2, 1:-1] of (24, 22, 12)
    assert fp.shapes_after_crop[0] == (20, 18, 10)
    # the tumour enhances by 60 per phase over a ~100 background
    means = [s.mean for s in fp.intensity]
    assert means[0] == pytest.approx(100, abs=3) and means[2] - means[0] == pytest.approx(120, abs=6)


def test_build_load_resume_and_invalidate(tiny_dataset, tmp_path):
    cases = mamamia.load_dataset(tiny_dataset)
    fp, plan = _plan(cases)
    root = tmp_path / "cache"
    folder = cache.build_cache(cases, plan, root, workers=1, progress=False)
    loaded = cache.load_cached(folder, [c.patient_id for c in cases])
    assert len(loaded) == 3
    cc = loaded[0]
    assert isinstance(cc.image, np.memmap) and cc.image.dtype == np.float32
    ref_img, ref_mask, meta = preprocess(cases[0], plan)
    np.testing.assert_array_equal(np.asarray(cc.image), ref_img)
    np.testing.assert_array_equal(np.asarray(cc.label[0]), ref_mask)
    assert cc.meta == meta and len(cc.fg) == int(ref_mask.sum())
    assert np.all(ref_mask[tuple(cc.fg.T)] == 1)
    # resume: nothing rebuilt
    stamp = (folder / f"{cases[0].patient_id}_img.npy").stat().st_mtime_ns
    assert cache.build_cache(cases, plan, root, workers=1, progress=False) == folder
    assert (folder / f"{cases[0].patient_id}_img.npy").stat().st_mtime_ns == stamp
    # an interrupted case (no JSON) is rebuilt
    (folder / f"{cases[1].patient_id}.json").unlink()
    cache.build_cache(cases, plan, root, workers=1, progress=False)
    assert (folder / f"{cases[1].patient_id}.json").exists()
    # a different patch size reuses the cache, a different spacing invalidates it
    same = dataclasses.replace(plan, batch_size=plan.batch_size + 1)
    assert cache.cache_key(same) == cache.cache_key(plan)
    other = dataclasses.replace(plan, target_spacing=(3.0, 3.0, 3.0))
    assert cache.cache_key(other) != cache.cache_key(plan)
    folder2 = cache.build_cache(cases, other, root, workers=1, progress=False)
    assert folder2 != folder and cache.load_cached(folder2, [cases[0].patient_id])[0].image.shape[1] == 10


def test_missing_case_names_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="NOPE_1"):
        cache.load_cached(tmp_path, ["NOPE_1"])
