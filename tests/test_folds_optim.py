import pytest
import torch

from core.folds import kfold_splits
from core.optim import make_optimizer, poly_lr


def test_folds_partition_and_determinism():
    ids = [f"C_{i:03d}" for i in range(23)][::-1]
    folds = kfold_splits(ids)
    assert len(folds) == 5
    vals = [v for f in folds for v in f["val"]]
    assert sorted(vals) == sorted(ids) and len(vals) == len(set(vals))
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert len(f["train"]) + len(f["val"]) == 23
    assert kfold_splits(list(reversed(ids))) == folds  # order of input does not matter
    assert kfold_splits(ids, seed=1) != folds
    with pytest.raises(ValueError, match="3 case"):
        kfold_splits(["a", "b", "c"])


def test_folds_match_sklearn_nnunet_call():
    # nnU-Net v2: KFold(5, shuffle=True, random_state=12345) over sorted identifiers
    import numpy as np
    from sklearn.model_selection import KFold
    ids = sorted(f"X{i}" for i in range(12))
    expected = [sorted(np.array(ids)[va]) for _, va in KFold(5, shuffle=True, random_state=12345).split(ids)]
    assert [sorted(f["val"]) for f in kfold_splits(ids)] == expected


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(1.0, 99, 100) == pytest.approx(0.01 ** 0.9)


def test_optimizer_defaults():
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer("sgd", p)
    g = sgd.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.01, 0.99, True, 3e-5)
    adamw = make_optimizer("adamw", p).param_groups[0]
    assert (adamw["lr"], adamw["eps"], adamw["weight_decay"]) == (1e-3, 1e-4, 3e-5)
    with pytest.raises(ValueError, match="adam"):
        make_optimizer("adam", p)
