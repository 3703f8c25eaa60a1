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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: with 2 threads, OpenMP synchronisation (not arithmetic) dominates, badly so on
    a busy machine. Restored afterwards for the other test modules (``pytestmark``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hooked_conv_elements(net, x) -> int:
    """Elements of every Conv3d / ConvTranspose3d output of one forward pass, seen by hooks."""
    from torch import nn
    count = [0]
    handles = [m.register_forward_hook(lambda _m, _i, out: count.__setitem__(0, count[0] + out.numel()))
               for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return count[0]


def pcr_table(n=60, f=12, seed=0):
    """A feature table for the pCR pipeline: two informative columns (0, 1), a near-copy of
    column 0 (2) and noise; labels from the informative columns plus noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, f))
    X[:, 2] = X[:, 0] + 0.01 * rng.normal(size=n)
    y = (X[:, 0] + 0.8 * X[:, 1] + 0.5 * rng.normal(size=n) > 0.3).astype(int)
    return X, y, [f"f{i}" for i in range(f)]


def write_case(root, pid: str, phases, mask, affine, record: dict) -> None:
    """One case in the MAMA-MIA layout: ``images/<PID>/<pid>_000k.nii.gz`` (int16), the expert
    mask and the JSON record (file names in lower case, as in the download)."""
    import json

    import nibabel as nib
    import numpy as np

    folder = root / "images" / pid
    folder.mkdir(parents=True)
    for k, img in enumerate(phases):
        nib.save(nib.Nifti1Image(np.asarray(img).astype(np.int16), affine), str(folder / f"{pid.lower()}_{k:04d}.nii.gz"))
    seg = root / "segmentations" / "expert"
    seg.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(mask).astype(np.uint8), affine), str(seg / f"{pid.lower()}.nii.gz"))
    info = root / "patient_info_files"
    info.mkdir(exist_ok=True)
    (info / f"{pid.lower()}.json").write_text(json.dumps(record))


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
        write_case(root, pid, [body * (100 + rng.normal(0, 5, shape)) + blob * 60 * k for k in range(phases)],
                   blob, aff, {"patient_id": pid, "clinical_data": {"age": 40 + i, "menopausal_status": "pre"},
                               "primary_lesion": {"pcr": i % 2}, "imaging_data": {"dataset": "DUKE"}})
    (root / "train_test_splits.csv").write_text(
        "train_split,test_split\n" + "\n".join(f"{p}," for p in ids[:-1]) + f"\n,{ids[-1]}\n")
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_tiny_dataset(tmp_path / "tiny")
