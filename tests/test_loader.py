import numpy as np
import pytest
import torch

from data import augment
from data.loader import BatchLoader, batch_seeds
from data.sampler import PatchSampler

PATCH = (12, 12, 12)


def _sampler(batch=2):
    rng = np.random.default_rng(0)
    images, labels = [], []
    for shape in [(24, 22, 20), (18, 26, 16)]:
        images.append(rng.standard_normal((2, *shape)).astype(np.float32))
        lab = np.zeros((1, *shape), np.uint8)
        lab[0, 5:10, 6:12, 4:9] = 1
        labels.append(lab)
    return PatchSampler(images, labels, None, PATCH, batch, seed=123)


def _take(loader, n):
    with loader:
        return [next(loader) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
               and x["case_ids"] == y["case_ids"] for x, y in zip(a, b))


def test_shapes_types_and_wait_statistic():
    loader = BatchLoader(_sampler(), PATCH, "nnunet", seed=0, num_workers=2)
    with loader:
        batches = [next(loader) for _ in range(5)]
        stats = loader.stats()
        assert loader.wait_time >= 0 and stats["batches"] == 5 and stats["wait_max_s"] >= loader.wait_time
    for i, b in enumerate(batches):
        assert b["image"].shape == (2, 2, *PATCH) and b["image"].dtype == torch.float32
        assert b["label"].shape == (2, 1, *PATCH) and b["label"].dtype == torch.uint8
        assert b["index"] == i and len(b["case_ids"]) == 2
        assert set(torch.unique(b["label"]).tolist()) <= {0, 1}


def test_batches_are_a_function_of_seed_and_index_only():
    one = _take(BatchLoader(_sampler(), PATCH, seed=4, num_workers=1), 6)
    two = _take(BatchLoader(_sampler(), PATCH, seed=4, num_workers=2, prefetch=1), 6)
    other = _take(BatchLoader(_sampler(), PATCH, seed=5, num_workers=2), 6)
    assert _same(one, two)
    assert not _same(one, other)
    # batch i reproduced by hand from (seed, i)
    rng, gen = batch_seeds(4, 3)
    s = _sampler()
    params = augment.draw_params(2, "nnunet", gen, num_channels=2)
    raw = s.sample_batch(rng, [not r for r in augment.needs_resampling(params)])
    image, label = augment.apply(raw["image"], raw["label"], params, PATCH)
    assert torch.equal(image, one[3]["image"]) and torch.equal(label, one[3]["label"])


def test_augmenting_on_the_consumer_side_gives_the_same_batches():
    worker = _take(BatchLoader(_sampler(), PATCH, seed=2, num_workers=2), 4)
    device = _take(BatchLoader(_sampler(), PATCH, seed=2, num_workers=2, augment_on="device"), 4)
    assert _same(worker, device)


def test_process_backend_matches_threads():
    threads = _take(BatchLoader(_sampler(), PATCH, seed=9, num_workers=2), 4)
    procs = _take(BatchLoader(_sampler(), PATCH, seed=9, num_workers=2, backend="process"), 4)
    assert _same(threads, procs)


class _Broken(PatchSampler):
    def sample_batch(self, rng, centre_only=None):
        raise OSError("disk gone")


def test_worker_errors_reach_the_consumer_and_bad_settings_are_rejected():
    base = _sampler()
    broken = _Broken(base.images, base.labels, base.fg_locations, PATCH, 2)
    loader = BatchLoader(broken, PATCH, num_workers=1)
    with pytest.raises(RuntimeError, match="batch 0") as info:
        next(loader)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError, match="backend"):
        BatchLoader(base, PATCH, backend="fork")
    with pytest.raises(ValueError, match="profile"):
        BatchLoader(base, PATCH, "nnUNet")
    with pytest.raises(ValueError, match="augment_on"):
        BatchLoader(base, PATCH, augment_on="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loader_augments_on_the_gpu():
    batches = _take(BatchLoader(_sampler(), PATCH, seed=1, device="cuda"), 3)
    assert all(b["image"].is_cuda and b["label"].is_cuda for b in batches)
    assert batches[0]["image"].shape == (2, 2, *PATCH)


@pytest.fixture(scope="module")
def uninterrupted():
    return _take(BatchLoader(_sampler(), PATCH, seed=7, num_workers=1), 8)


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("workers", [2, 3])
def test_resume_at_every_offset_continues_the_stream(uninterrupted, backend, workers):
    for start in range(6):  # every start offset modulo 2 and 3
        resumed = _take(BatchLoader(_sampler(), PATCH, seed=7, num_workers=workers, backend=backend,
                                    start=start, prefetch=1), 2)
        assert [b["index"] for b in resumed] == [start, start + 1]
        assert _same(resumed, uninterrupted[start:start + 2]), (backend, workers, start)
