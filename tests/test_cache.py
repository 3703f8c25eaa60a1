import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_ids_are_validated_before_they_become_file_names(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="patient id"):
        cache.load_cached(tmp_path, ["../../etc/passwd"])
    case = dataclasses.replace(mamamia.load_dataset(tiny_dataset)[0], patient_id="../escape")
    _, plan = _plan(mamamia.load_dataset(tiny_dataset)[:1])
    with pytest.raises(ValueError, match="escape"):
        cache.build_cache([case], plan, tmp_path / "c", workers=1, progress=False)
    assert not (tmp_path / "escape_img.npy").exists()


def test_empty_masks_are_one_summary_warning(tiny_dataset, tmp_path, caplog):
    import logging

    import nibabel as nib

    cases = mamamia.load_dataset(tiny_dataset)
    m = nib.load(str(cases[1].mask_path))
    nib.save(nib.Nifti1Image(np.zeros(m.shape, np.uint8), m.affine), str(cases[1].mask_path))
    _, plan = _plan(cases)
    with caplog.at_level(logging.WARNING, logger="data.cache"):
        folder = cache.build_cache(cases, plan, tmp_path / "c", workers=1, progress=False)
    lines = [r.getMessage() for r in caplog.records if "empty expert mask" in r.getMessage()]
    assert len(lines) == 1 and "1 of 3" in lines[0] and cases[1].patient_id in lines[0]
    assert cache.empty_mask_ids(folder, [c.patient_id for c in cases]) == [cases[1].patient_id]


HELPER = '''
import os, time
def record_pid_and_sleep(folder):
    with open(os.path.join(folder, str(os.getpid())), "w") as fh:
        fh.write("x")
    time.sleep(120)
'''

PARENT = '''
import sys
sys.path[:0] = [{repo!r}, {helper!r}]
from data import cache
import pool_helper
cache._map(pool_helper.record_pid_and_sleep, [{out!r}] * 2, 2, "test", False)
'''


def _running(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_pool_workers_die_with_a_killed_parent(tmp_path):
    helper = tmp_path / "helper"
    helper.mkdir()
    (helper / "pool_helper.py").write_text(HELPER)
    out = tmp_path / "pids"
    out.mkdir()
    repo = str(Path(__file__).resolve().parents[1])
    script = PARENT.format(repo=repo, helper=str(helper), out=str(out))
    parent = subprocess.Popen([sys.executable, "-c", script])
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = [int(p.name) for p in out.iterdir()]
        assert len(workers) == 2, f"pool did not start (parent rc {parent.poll()})"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_running(w) for w in workers), "pool workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for w in workers:  # only the processes this test started
            if _running(w):
                os.kill(w, signal.SIGKILL)
