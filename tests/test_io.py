import errno
import gzip
import logging
import os
import stat

import nibabel as nib
import numpy as np
import pytest

from data import io


def _write(path, arr, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine), str(path))
    return path


def test_load_nifti_spacing_and_dtype(tmp_path):
    aff = np.diag([0.7, 0.8, 2.0, 1.0])
    p = _write(tmp_path / "a.nii.gz", np.arange(24, dtype=np.int16).reshape(2, 3, 4), aff)
    v = io.load_nifti(p)
    assert v.array.dtype == np.float32 and v.shape == (2, 3, 4)
    assert v.spacing == pytest.approx((0.7, 0.8, 2.0))
    assert v.array[1, 2, 3] == 23


def test_spacing_of_rotated_affine():
    # sagittal-like direction cosines: columns permuted, norms are the spacings
    aff = np.array([[0, 0, 2.0, 0], [0.5, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])
    assert io.spacing_from_affine(aff) == pytest.approx((0.5, 0.7, 2.0))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nii.gz"):
        io.load_nifti(tmp_path / "nope.nii.gz")


def test_truncated_gzip_names_file(tmp_path):
    p = _write(tmp_path / "t.nii.gz", np.random.rand(20, 20, 20).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.ImageError, match="t.nii.gz"):
        io.load_nifti(p)


def test_garbage_file_names_file(tmp_path):
    p = tmp_path / "g.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti header at all" * 20))
    with pytest.raises(io.ImageError, match="g.nii.gz"):
        io.load_nifti(p)


def test_nan_voxels_raise_or_zero(tmp_path, caplog):
    a = np.ones((3, 3, 3), np.float32)
    a[0, 0, 0] = np.nan
    a[1, 1, 1] = np.inf
    p = _write(tmp_path / "n.nii.gz", a)
    with pytest.raises(io.ImageError, match="2 NaN/inf"):
        io.load_nifti(p)
    with caplog.at_level(logging.WARNING):
        v = io.load_nifti(p, nan_policy="zero")
    assert v.array[0, 0, 0] == 0 and v.array[1, 1, 1] == 0 and v.array.sum() == 25
    assert "NaN" in caplog.text


def test_4d_rejected(tmp_path):
    p = _write(tmp_path / "f.nii.gz", np.zeros((2, 2, 2, 3), np.float32))
    with pytest.raises(io.ImageError, match="3D"):
        io.load_nifti(p)


def test_same_grid_tolerance():
    a = np.eye(4)
    b = a.copy()
    b[0, 3] = 5e-6
    assert io.same_grid(a, (2, 2, 2), b, (2, 2, 2))
    b[0, 3] = 1e-3
    assert not io.same_grid(a, (2, 2, 2), b, (2, 2, 2))
    assert not io.same_grid(a, (2, 2, 2), a, (2, 2, 3))


def test_resample_integer_shift_is_exact():
    src = np.random.default_rng(0).random((6, 5, 4)).astype(np.float32)
    src_aff = np.eye(4)
    dst_aff = np.eye(4)
    dst_aff[0, 3] = 1.0  # destination voxel i sits at source voxel i+1
    out = io.resample_to_grid(src, src_aff, dst_aff, (5, 5, 4), order=1)
    np.testing.assert_allclose(out, src[1:], atol=1e-6)


def test_load_phases_resamples_mismatched_grid(tmp_path, caplog):
    rng = np.random.default_rng(1)
    base = rng.random((8, 8, 8)).astype(np.float32)
    p0 = _write(tmp_path / "x_0000.nii.gz", base)
    p1 = _write(tmp_path / "x_0001.nii.gz", base * 2)
    shifted = np.eye(4)
    shifted[1, 3] = -1.0  # one voxel off: must be resampled onto the _0001 grid
    p2 = _write(tmp_path / "x_0002.nii.gz", base * 3, shifted)
    with caplog.at_level(logging.WARNING):
        arr, sp, aff = io.load_phases([p0, p1, p2], reference=1)
    assert arr.shape == (3, 8, 8, 8) and np.allclose(aff, np.eye(4))
    assert "x_0002" in caplog.text
    np.testing.assert_allclose(arr[0], base)
    # destination voxel j sits at source voxel j+1 on axis 1
    np.testing.assert_allclose(arr[2][:, :7], (base * 3)[:, 1:], atol=1e-5)
    np.testing.assert_allclose(arr[2][:, 7], (base * 3)[:, 7], atol=1e-5)  # edge repeated


def test_save_nifti_atomic_no_clobber(tmp_path):
    p = tmp_path / "out" / "m.nii.gz"
    aff = np.diag([0.7, 0.7, 1.5, 1.0])
    io.save_nifti(p, np.ones((3, 4, 5)), aff, dtype=np.uint8)
    img = nib.load(str(p))
    assert img.get_data_dtype() == np.uint8 and np.allclose(img.affine, aff)
    with pytest.raises(FileExistsError):
        io.save_nifti(p, np.zeros((3, 4, 5)), aff, dtype=np.uint8)
    io.save_nifti(p, np.zeros((3, 4, 5)), aff, dtype=np.uint8, overwrite=True)
    assert np.asarray(nib.load(str(p)).dataobj).sum() == 0
    assert [q.name for q in p.parent.iterdir()] == ["m.nii.gz"]  # no temp files left


def test_save_refuses_protected_input(tmp_path):
    p = _write(tmp_path / "in.nii.gz", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="input"):
        io.save_nifti(p, np.ones((2, 2, 2)), np.eye(4), overwrite=True, protected=[p])
    assert np.asarray(nib.load(str(p)).dataobj).sum() == 0


def test_save_copies_reference_header_geometry(tmp_path):
    aff = np.array([[0, 0, -2.0, 10], [-0.7, 0, 0, 5], [0, 0.7, 0, -3], [0, 0, 0, 1]])
    ref = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), aff)
    ref.set_qform(aff, code=1)
    ref.set_sform(aff, code=2)
    rp = tmp_path / "ref.nii.gz"
    nib.save(ref, str(rp))
    ref = nib.load(str(rp))
    out = io.save_nifti(tmp_path / "o.nii.gz", np.ones((4, 5, 6)), ref.affine, dtype=np.uint8, reference=ref)
    o = nib.load(str(out))
    np.testing.assert_allclose(o.affine, ref.affine, atol=1e-6)
    assert int(o.header["sform_code"]) == 2
    assert o.header.get_zooms() == pytest.approx(ref.header.get_zooms())


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_atomic_writes_follow_the_umask(tmp_path, umask_027):
    assert io.current_umask() == 0o027
    want = 0o666 & ~0o027  # 0o640, what open() would create; mkstemp alone gives 0o600
    a = io.atomic_write_bytes(tmp_path / "a.bin", b"xy")
    b = io.atomic_write_text(tmp_path / "b.txt", "hé")
    c = io.atomic_write_bytes(tmp_path / "c.bin", lambda fh: fh.write(b"cb"))
    d = io.save_nifti(tmp_path / "d.nii.gz", np.ones((2, 2, 2)), np.eye(4), dtype=np.uint8)
    for p in (a, b, c, d):
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert a.read_bytes() == b"xy" and b.read_text("utf-8") == "hé" and c.read_bytes() == b"cb"


def test_atomic_write_failure_removes_temporary_and_names_path(tmp_path):
    target = tmp_path / "out" / "x.json"

    def full_disk(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        io.atomic_write_bytes(target, full_disk)
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert "Errno 28" in str(info.value)
    assert list(target.parent.iterdir()) == []  # neither target nor temporary left

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder bug")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, broken)
    assert list(target.parent.iterdir()) == []
    # the writer callback gets a temporary whose name keeps the target's suffix
    seen = []
    io.atomic_write(tmp_path / "m.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"")))
    assert seen[0].endswith(".nii.gz") and seen[0].startswith(".m.nii.gz.")


@pytest.mark.parametrize("bad", ["", "  ", "../x", "a/b", "a\\b", "..", "x\0y", "DUKE_001/..", None])
def test_safe_name_rejects_ids_that_are_not_file_names(bad):
    with pytest.raises(ValueError, match="patient id"):
        io.safe_name(bad)


def test_safe_name_keeps_good_ids():
    for pid in ("DUKE_001", "duke_001", "ISPY1_1001", "NACT_01.v2"):
        assert io.safe_name(pid) == pid


def test_phase_outside_the_reference_grid_is_an_error(tmp_path):
    base = np.ones((6, 6, 6), np.float32)
    far = np.eye(4)
    far[0, 3] = 100.0  # 100 voxels away: no voxel in common
    p0 = _write(tmp_path / "y_0000.nii.gz", base)
    p1 = _write(tmp_path / "y_0001.nii.gz", base * 2, far)
    with pytest.raises(io.ImageError, match="y_0001.nii.gz.*does not overlap"):
        io.load_phases([p0, p1], reference=0)
    with pytest.raises(io.ImageError, match="src.nii"):
        io.resample_to_grid(base, far, np.eye(4), (6, 6, 6), source="src.nii")
    near = np.eye(4)
    near[0, 3] = 5.0  # one voxel layer in common: still resampled
    assert io.grids_overlap(near, (6, 6, 6), np.eye(4), (6, 6, 6))
    assert not io.grids_overlap(far, (6, 6, 6), np.eye(4), (6, 6, 6))
