"""NIfTI reading and writing, grid geometry, atomic writes.

Everything that opens an image file goes through here, so that every failure names the file
and the problem (missing, truncated, corrupt, NaN voxels, mismatched grids) and every write is
atomic (temporary file in the same folder, then ``os.replace``) and never clobbers an input.

Arrays are returned in the voxel order nibabel gives, ``(X, Y, Z)``; spacing is the voxel size
along those axes in mm (the column norms of the affine).
"""
from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from core.atomic import atomic_write, current_umask  # noqa: F401  (re-exported: the one atomic-write helper)

log = logging.getLogger(__name__)

# Phases of one MAMA-MIA case can differ slightly in origin/direction; within this tolerance
# they are the same grid (the MAMA-MIA phases of a case share one acquisition grid).
GRID_TOL = 1e-5
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    """One 3D image: ``array`` (X, Y, Z), its 4x4 ``affine`` (voxel -> RAS mm) and ``spacing``."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    low = name.lower()
    for suf in NIFTI_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore


def load_nifti(path: str | os.PathLike, dtype=np.float32, nan_policy: str = "raise") -> Volume:
    """Read a 3D NIfTI file into memory.

    ``nan_policy``: ``"raise"`` (default) rejects NaN/inf voxels with an error naming the file and
    the count; ``"zero"`` replaces them by 0 with a logged warning.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    if nan_policy not in ("raise", "zero"):
        raise ValueError(f"nan_policy must be 'raise' or 'zero', got {nan_policy!r}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError,
            ValueError) as exc:
        raise ImageError(f"{path}: cannot read NIfTI (truncated or corrupt file?): {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(f"{path}: expected a 3D image, got shape {data.shape}")
    data = data.astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if n_bad:
            if nan_policy == "raise":
                raise ImageError(f"{path}: {n_bad} NaN/inf voxels (use nan_policy='zero' to zero them)")
            log.warning("%s: %d NaN/inf voxels set to 0", path, n_bad)
            data = np.where(bad, 0, data).astype(dtype, copy=False)
    affine = np.asarray(img.affine, dtype=np.float64)
    return Volume(array=data, affine=affine, spacing=spacing_from_affine(affine), path=path)


def load_header(path: str | os.PathLike):
    """The nibabel image object (lazy: header and affine only) for geometry checks."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        return nib.load(str(path))
    except (OSError, EOFError, zlib.error, nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read NIfTI header: {exc}") from exc


def same_grid(affine_a, shape_a, affine_b, shape_b, tol: float = GRID_TOL) -> bool:
    """True when two grids have the same shape and affines equal within ``tol``."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=tol, rtol=0))


def grids_overlap(src_affine, src_shape, dst_affine, dst_shape) -> bool:
    """False when the destination grid's field of view misses the source's entirely (the
    bounding box of its corners in source voxel coordinates does not meet the source volume)."""
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    corners = np.array(np.meshgrid(*[(-0.5, s - 0.5) for s in dst_shape], indexing="ij")).reshape(3, -1)
    pts = m[:3, :3] @ corners + m[:3, 3:4]
    lo, hi = pts.min(1), pts.max(1)
    return bool(np.all(hi > -0.5) and np.all(lo < np.asarray(src_shape, float) - 0.5))


def resample_to_grid(array: np.ndarray, src_affine, dst_affine, dst_shape, order: int = 1,
                     cval: float = 0.0, mode: str = "constant", source=None) -> np.ndarray:
    """Resample ``array`` (on ``src_affine``) onto the grid (``dst_affine``, ``dst_shape``).

    World coordinates are matched exactly: destination voxel v samples source voxel
    ``inv(src_affine) @ dst_affine @ v``. Grids that do not overlap at all are an ImageError
    naming ``source`` (the file the array came from): resampling would give a constant volume.
    """
    if not grids_overlap(src_affine, array.shape, dst_affine, dst_shape):
        raise ImageError(f"{source or 'source image'}: its grid does not overlap the target grid at all "
                         f"(shape {tuple(array.shape)} vs {tuple(dst_shape)}; check the affines)")
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    out = ndimage.affine_transform(array.astype(np.float32, copy=False), m[:3, :3], offset=m[:3, 3],
                                   output_shape=tuple(int(s) for s in dst_shape), order=order,
                                   mode=mode, cval=cval)
    return out


def load_phases(paths, reference: int = 0, nan_policy: str = "raise",
                dtype=np.float32) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Load several phases into one ``(C, X, Y, Z)`` array on the grid of ``paths[reference]``.

    Phases whose grid differs from the reference by more than ``GRID_TOL`` are resampled onto it
    (linear interpolation in world coordinates) with a logged warning.
    Returns ``(array, spacing, affine)`` of the reference grid.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load_phases: no phase paths given")
    ref = load_nifti(paths[reference], dtype=dtype, nan_policy=nan_policy)
    out = np.empty((len(paths),) + ref.shape, dtype=dtype)
    for i, p in enumerate(paths):
        vol = ref if i == reference else load_nifti(p, dtype=dtype, nan_policy=nan_policy)
        if same_grid(vol.affine, vol.shape, ref.affine, ref.shape):
            out[i] = vol.array
        else:
            log.warning("%s: grid differs from %s by more than %g; resampled onto it",
                        p, paths[reference], GRID_TOL)
            # phases of one acquisition cover the same field of view: a slightly shifted phase
            # repeats its edge rather than gaining a black border slice
            if not grids_overlap(vol.affine, vol.shape, ref.affine, ref.shape):
                raise ImageError(f"{p}: its grid does not overlap the grid of {paths[reference]} at all "
                                 f"(affines differ by up to {np.abs(vol.affine - ref.affine).max():.3g})")
            out[i] = resample_to_grid(vol.array, vol.affine, ref.affine, ref.shape, order=1,
                                      mode="nearest", source=p)
    return out, ref.spacing, ref.affine


def safe_name(patient_id) -> str:
    """``patient_id`` unchanged when it can be used as (part of) a file name, else ValueError.

    Ids come from folder names, split files and the challenge platform; every file name built from
    one (cache arrays, predictions) goes through here so that an id such as ``../x`` or ``a/b``
    cannot write outside its folder.
    """
    if not isinstance(patient_id, str):
        raise ValueError(f"patient id must be a string, got {patient_id!r}")
    bad = None
    if not patient_id.strip():
        bad = "is empty"
    elif "\0" in patient_id:
        bad = "contains a NUL character"
    elif "/" in patient_id or "\\" in patient_id or (os.altsep and os.altsep in patient_id):
        bad = "contains a path separator"
    elif ".." in patient_id:
        bad = "contains '..'"
    if bad:
        raise ValueError(f"patient id {patient_id!r} {bad}; it cannot be used as a file name")
    return patient_id


def atomic_write_bytes(path: str | os.PathLike, payload: bytes | Callable[[BinaryIO], None],
                       overwrite: bool = True, protected=()) -> Path:
    """Write ``payload`` (bytes, or a callback that writes to the open binary file) atomically;
    see :func:`atomic_write`."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            if callable(payload):
                payload(fh)
            else:
                fh.write(payload)

    return atomic_write(path, write, overwrite=overwrite, protected=protected)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True, protected=()) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, protected=protected)


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine, dtype=None, reference=None,
               overwrite: bool = False, protected=()) -> Path:
    """Write a 3D array as NIfTI atomically.

    ``reference``: a nibabel image whose header (qform/sform codes, units) is copied so the output
    opens with the same geometry as the input it was derived from. ``protected``: paths that must
    never be overwritten (the inputs). An existing ``path`` is an error unless ``overwrite``.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output name must end in .nii or .nii.gz")
    if dtype is not None:
        array = np.asarray(array).astype(dtype, copy=False)
    if reference is not None:
        header = reference.header.copy()
        header.set_data_dtype(array.dtype)
        img = nib.Nifti1Image(array, np.asarray(affine), header=header)
        img.set_qform(np.asarray(affine), code=int(reference.header["qform_code"]) or 1)
        img.set_sform(np.asarray(affine), code=int(reference.header["sform_code"]) or 1)
    else:
        img = nib.Nifti1Image(array, np.asarray(affine))
        img.set_qform(np.asarray(affine), code=1)
        img.set_sform(np.asarray(affine), code=1)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite,
                        protected=protected)
