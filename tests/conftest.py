import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # the test machine has 2 cores; oversubscription makes small-tensor tests slower
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def write_tiny_dataset(root, n=3, shape=(24, 22, 12), spacing=(1.5, 1.5, 2.5), phases=3, seed=0):
    """A minimal MAMA-MIA-like folder: bright blob 'tumour' enhancing over phases."""
    import json

    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(seed)
    aff = np.diag(list(spacing) + [1.0])
    ids = []
    for i in range(n):
        pid = f"DUKE_{i:03d}"
        ids.append(pid)
        g = np.indices(shape).astype(float)
        c = [s / 2 + rng.uniform(-2, 2) for s in shape]
        blob = sum(((g[a] - c[a]) / (s / 5)) ** 2 for a, s in enumerate(shape)) <= 1
        body = np.zeros(shape, bool)
        body[2:-2, 2:-2, 1:-1] = True
        folder = root / "images" / pid
        folder.mkdir(parents=True)
        for k in range(phases):
            img = body * (100 + rng.normal(0, 5, shape)) + blob * 60 * k
            nib.save(nib.Nifti1Image(img.astype(np.int16), aff), str(folder / f"{pid.lower()}_{k:04d}.nii.gz"))
        seg = root / "segmentations" / "expert"
        seg.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(blob.astype(np.uint8), aff), str(seg / f"{pid.lower()}.nii.gz"))
        info = root / "patient_info_files"
        info.mkdir(exist_ok=True)
        (info / f"{pid.lower()}.json").write_text(json.dumps({
            "patient_id": pid, "clinical_data": {"age": 40 + i, "menopausal_status": "pre"},
            "primary_lesion": {"pcr": i % 2}, "imaging_data": {"dataset": "DUKE"}}))
    (root / "train_test_splits.csv").write_text(
        "train_split,test_split\n" + "\n".join(f"{p}," for p in ids[:-1]) + f"\n,{ids[-1]}\n")
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_tiny_dataset(tmp_path / "tiny")
