import math
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
    adam = make_optimizer("adam", p)
    assert type(adam) is torch.optim.Adam and (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (1e-4, 3e-5)
    with pytest.raises(ValueError, match="adam"):
        make_optimizer("lamb", p)


def test_adam_adds_l2_to_the_gradient_adamw_decays_the_weight():
    """One step from w = 1 with gradient g = 0.5, lr 0.1, weight decay 0.2, betas (0.9, 0.999),
    eps 1e-8. Adam: g' = g + wd w = 0.7; the first bias-corrected step is lr * g'/|g'| = 0.1, so
    w = 0.9. AdamW: w = w (1 - lr wd) = 0.98, then the Adam step of g (0.1): 0.88."""
    def step(name):
        w = torch.nn.Parameter(torch.ones(1))
        opt = make_optimizer(name, [w], lr=0.1)
        for g in opt.param_groups:
            g["weight_decay"], g["eps"] = 0.2, 1e-8
        w.grad = torch.full((1,), 0.5)
        opt.step()
        return float(w)
    assert step("adam") == pytest.approx(0.9, abs=1e-6)
    assert step("adamw") == pytest.approx(0.88, abs=1e-6)


def test_cosine_and_warmup_values():
    from core.optim import cosine_lr, scheduled_lr
    assert cosine_lr(1.0, 0, 10) == 1.0
    assert cosine_lr(1.0, 5, 10) == pytest.approx(0.5)
    assert cosine_lr(1.0, 10, 10) == pytest.approx(0.0)
    assert cosine_lr(2.0, 2, 8) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))   # 1.7071
    assert scheduled_lr("poly", 0.01, 50, 100) == poly_lr(0.01, 50, 100)               # no warm-up: unchanged
    # warm-up 4 of 14: 0.25, 0.5, 0.75, 1.0, then cosine over the remaining 10 epochs
    assert [scheduled_lr("cosine", 1.0, e, 14, warmup=4) for e in range(5)] == \
        pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert scheduled_lr("cosine", 1.0, 9, 14, warmup=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lr("step", 1.0, 0, 10)
