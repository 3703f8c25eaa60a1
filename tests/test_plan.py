"""core/plan.py: strict JSON, hashing, overrides, atomic save/load."""
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from core import plan as plan_mod
from core.plan import (ArchSpec, Fingerprint, IntensityStats, Plan, apply_overrides, from_json,
                       load_fingerprint, load_plan, plan_hash, save_plan, to_json)


def _unet():
    # 4 stages, Z pooled only twice: num_pool (3, 3, 2)
    return ArchSpec(name="unet", num_pool=(3, 3, 2), features=(32, 64, 128, 256),
                    kernel_sizes=((3, 3, 1), (3, 3, 3), (3, 3, 3), (3, 3, 3)),
                    strides=((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)),
                    n_conv_per_stage=(2, 2, 2, 2))


def _mednext():
    return ArchSpec(name="mednext", num_pool=(4, 4, 4), size="M", kernel=3, base_channels=32)


def _plan(**changes):
    stats = IntensityStats(mean=120.5, std=30.25, percentile_00_5=10.0, percentile_99_5=400.0)
    kwargs = dict(target_spacing=(0.7, 0.7, 1.0), channels=(0, 1, 2),
                  normalisation=("zscore", "zscore", "zscore"), patch_size=(128, 128, 64),
                  batch_size=2, median_shape=(300, 300, 160), intensity_stats=(stats,) * 3,
                  archs={"unet": _unet(), "mednext": _mednext()})
    kwargs.update(changes)
    return Plan(**kwargs)


def _fingerprint():
    return Fingerprint(spacings=((0.7, 0.7, 1.0), (0.8, 0.8, 2.0)),
                       shapes_after_crop=((300, 300, 160), (256, 256, 60)),
                       crop_fractions=(0.9, 0.6),
                       intensity=(IntensityStats(1.0, 2.0, -3.0, 5.0),) * 2,
                       channel_names=("0000", "0001"), n_cases=2)


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------
def test_json_round_trip_plan_and_fingerprint():
    p = _plan()
    assert from_json(to_json(p)) == p
    fp = _fingerprint()
    assert from_json(to_json(fp), Fingerprint) == fp
    spec = _unet()
    assert from_json(to_json(spec), ArchSpec) == spec


def test_json_is_plain_and_lists_every_field():
    data = json.loads(to_json(_plan()))
    assert list(data) == [f.name for f in dataclasses.fields(Plan)]
    assert data["patch_size"] == [128, 128, 64]
    assert data["archs"]["unet"]["strides"][1] == [2, 2, 1]
    assert data["archs"]["mednext"]["features"] == []
    assert data["format_version"] == plan_mod.PLAN_FORMAT_VERSION


def test_numpy_values_are_normalised():
    p = _plan(patch_size=np.array([128, 128, 64]), batch_size=np.int64(2),
              target_spacing=np.array([0.7, 0.7, 1.0]))
    assert p == _plan()
    assert type(p.batch_size) is int and type(p.patch_size[0]) is int
    assert type(p.target_spacing[0]) is float
    json.loads(to_json(p))  # serialisable


@pytest.mark.parametrize("key", ["pach_size", "extra"])
def test_unknown_top_level_key_is_named(key):
    data = json.loads(to_json(_plan()))
    data[key] = 1
    with pytest.raises(ValueError, match=key):
        from_json(json.dumps(data))


def test_unknown_nested_key_is_named():
    data = json.loads(to_json(_plan()))
    data["archs"]["unet"]["featurez"] = [1]
    with pytest.raises(ValueError, match="featurez"):
        from_json(json.dumps(data))
    data = json.loads(to_json(_plan()))
    data["intensity_stats"][1]["median"] = 3.0
    with pytest.raises(ValueError, match="median"):
        from_json(json.dumps(data))


@pytest.mark.parametrize("key", ["batch_size", "format_version", "clahe"])
def test_missing_key_is_named(key):
    data = json.loads(to_json(_plan()))
    del data[key]
    with pytest.raises(ValueError, match=f"missing required key '{key}'"):
        from_json(json.dumps(data))


@pytest.mark.parametrize("key,value", [("patch_size", [128, 128]), ("patch_size", "128"),
                                       ("batch_size", 2.5), ("batch_size", True),
                                       ("target_spacing", [0.7, 0.7, "a"]), ("clahe", 1),
                                       ("format_version", 99)])
def test_wrong_values_are_refused(key, value):
    data = json.loads(to_json(_plan()))
    data[key] = value
    with pytest.raises(ValueError, match=key):
        from_json(json.dumps(data))


def test_plan_validation():
    with pytest.raises(ValueError, match="normalisation"):
        _plan(normalisation=("zscore", "zscore"))
    with pytest.raises(ValueError, match="minmax"):
        _plan(normalisation=("zscore", "minmax", "zscore"))
    with pytest.raises(ValueError, match="divisible"):
        _plan(patch_size=(128, 128, 40))  # unet needs Z % 4 == 0, mednext Z % 16 == 0
    with pytest.raises(ValueError, match="archs"):
        _plan(archs={"mednext": _unet()})
    with pytest.raises(ValueError, match="channels"):
        _plan(channels=(0, 0, 1))


def test_archspec_validation():
    with pytest.raises(ValueError, match="num_pool"):
        dataclasses.replace(_unet(), num_pool=(3, 3, 3))
    with pytest.raises(ValueError, match="strides"):
        dataclasses.replace(_unet(), strides=((2, 2, 2),) + _unet().strides[1:], num_pool=(4, 4, 3))
    with pytest.raises(ValueError, match="one entry per stage"):
        dataclasses.replace(_unet(), features=(32, 64, 128))
    with pytest.raises(ValueError, match="must not set"):
        dataclasses.replace(_mednext(), features=(32,))
    with pytest.raises(ValueError, match="kernel"):
        dataclasses.replace(_mednext(), kernel=4)
    with pytest.raises(ValueError, match="size"):
        dataclasses.replace(_mednext(), size="XL")
    with pytest.raises(ValueError, match="name"):
        ArchSpec(name="swin", num_pool=(4, 4, 4))


def test_fingerprint_validation():
    with pytest.raises(ValueError, match="n_cases"):
        dataclasses.replace(_fingerprint(), n_cases=3)
    with pytest.raises(ValueError, match="channel"):
        dataclasses.replace(_fingerprint(), channel_names=("0000",))


# ----------------------------------------------------------------------------------------------
# hash
# ----------------------------------------------------------------------------------------------
def test_plan_hash_is_sha256_of_canonical_json():
    p = dataclasses.replace(_plan(), resampling="spline")  # every key present in the hash
    reference = hashlib.sha256(json.dumps(json.loads(to_json(p)), sort_keys=True,
                                          separators=(",", ":")).encode()).hexdigest()
    assert plan_hash(p) == reference


def test_plan_hash_stable():
    # equal plans built separately, and with the archs dict in another order, hash equally
    a = _plan()
    b = _plan(archs={"mednext": _mednext(), "unet": _unet()})
    assert plan_hash(a) == plan_hash(b) == plan_hash(from_json(to_json(a)))
    # pinned: a change here means the plan format changed (bump PLAN_FORMAT_VERSION)
    assert plan_hash(a) == PINNED_HASH


def test_resampling_key_added_later():
    """Plans written before ``resampling`` existed load with 'cubic' and keep their hash; a
    spline plan hashes differently; an unknown method is refused."""
    import dataclasses
    import json
    a = _plan()
    d = json.loads(to_json(a))
    assert d["resampling"] == "cubic"
    del d["resampling"]
    old = from_json(json.dumps(d))
    assert old == a and plan_hash(old) == PINNED_HASH
    spline = dataclasses.replace(a, resampling="spline")
    assert plan_hash(spline) != PINNED_HASH and from_json(to_json(spline)).resampling == "spline"
    with pytest.raises(ValueError, match="resampling"):
        dataclasses.replace(a, resampling="lanczos")


PINNED_HASH = "e4969e660d6e4b04d4a0ce9c35de8183d2b7c57ea53504d49cce47392a18369b"


def test_plan_hash_changes_with_any_field():
    base = plan_hash(_plan())
    assert plan_hash(_plan(batch_size=3)) != base
    assert plan_hash(_plan(clahe=True)) != base
    assert plan_hash(_plan(target_spacing=(0.7, 0.7, 1.0 + 1e-9))) != base


# ----------------------------------------------------------------------------------------------
# overrides
# ----------------------------------------------------------------------------------------------
def test_overrides_parse_and_give_a_new_plan():
    p = _plan()
    q = apply_overrides(p, ["patch_size=128,128,128", "batch_size=4", "target_spacing=1,1,1",
                            "clahe=true", "normalisation=zscore_joint,zscore_joint,none"])
    assert q.patch_size == (128, 128, 128) and q.batch_size == 4
    assert q.target_spacing == (1.0, 1.0, 1.0) and type(q.target_spacing[0]) is float
    assert q.clahe is True
    assert q.normalisation == ("zscore_joint", "zscore_joint", "none")
    assert p == _plan()  # the original is untouched
    assert plan_hash(q) != plan_hash(p)
    assert dataclasses.replace(q, patch_size=p.patch_size, batch_size=2, target_spacing=p.target_spacing,
                               clahe=False, normalisation=p.normalisation) == p


def test_nested_overrides():
    p = _plan()
    q = apply_overrides(p, ["archs.mednext.kernel=5", "archs.mednext.size=L"])
    assert q.archs["mednext"].kernel == 5 and q.archs["mednext"].size == "L"
    assert p.archs["mednext"].kernel == 3
    assert q.archs["unet"] == p.archs["unet"]
    r = apply_overrides(p, ["archs.unet.features=16,32,64,128"])
    assert r.archs["unet"].features == (16, 32, 64, 128)
    s = apply_overrides(p, ["archs.unet.kernel_sizes=[[3,3,3],[3,3,3],[3,3,3],[3,3,3]]"])
    assert s.archs["unet"].kernel_sizes == ((3, 3, 3),) * 4


def test_override_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown key 'patchsize'.*patch_size"):
        apply_overrides(_plan(), ["patchsize=64,64,64"])
    with pytest.raises(ValueError, match="unknown key 'kernal'.*kernel"):
        apply_overrides(_plan(), ["archs.mednext.kernal=5"])
    with pytest.raises(ValueError, match="unet"):
        apply_overrides(_plan(), ["archs.swin.kernel=5"])


@pytest.mark.parametrize("item", ["batch_size=two", "patch_size=128,128", "clahe=maybe",
                                  "patch_size=100,128,64", "archs.unet.features=32,64",
                                  "batch_size", "target_spacing=1,1,nan"])
def test_override_bad_values(item):
    with pytest.raises(ValueError):
        apply_overrides(_plan(), [item])


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    path = tmp_path / "plan.json"
    save_plan(_plan(), path)
    assert load_plan(path) == _plan()
    assert os.listdir(tmp_path) == ["plan.json"]  # no temporary file left behind
    save_plan(_fingerprint(), tmp_path / "fingerprint.json")
    assert load_fingerprint(tmp_path / "fingerprint.json") == _fingerprint()


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    save_plan(_plan(), path)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(plan_mod.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_plan(_plan(batch_size=5), path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["plan.json"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_plan(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(to_json(_plan()).replace('"clahe"', '"clahee"'))
    with pytest.raises(ValueError, match="bad.json.*clahee"):
        load_plan(bad)
