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
        return float(w.detach())
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


def test_schedule_registry_and_poly_after_warmup():
    from core.optim import SCHEDULES, scheduled_lr
    assert set(SCHEDULES) == {"poly", "cosine"}
    # poly over 10 epochs: e=0 -> 1, e=5 -> 0.5^0.9 = 0.535887, e=9 -> 0.1^0.9 = 0.125893
    assert [scheduled_lr("poly", 1.0, e, 10) for e in (0, 5, 9)] == pytest.approx([1.0, 0.535887, 0.125893], abs=1e-6)
    # cosine over 10 epochs: e=0 -> 1, e=5 -> 0.5, e=10 -> 0
    assert [scheduled_lr("cosine", 1.0, e, 10) for e in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    # warm-up 2 of 12, then poly over 10: e=0 -> 0.5, e=1 -> 1, e=2 -> 1, e=7 -> 0.5^0.9, e=11 -> 0.1^0.9
    assert [scheduled_lr("poly", 1.0, e, 12, warmup=2) for e in (0, 1, 2, 7, 11)] == \
        pytest.approx([0.5, 1.0, 1.0, 0.535887, 0.125893], abs=1e-6)
    # warm-up 0 is exactly the plain schedule at every epoch
    for name, fn in SCHEDULES.items():
        assert [scheduled_lr(name, 0.01, e, 7) for e in range(7)] == [fn(0.01, e, 7) for e in range(7)]
    for bad in (-1, 10):
        with pytest.raises(ValueError, match="warmup"):
            scheduled_lr("poly", 1.0, 0, 10, warmup=bad)


def test_adam_l2_enters_the_adaptive_step_adamw_decay_does_not():
    """Two steps from w = 1 with gradient g = -0.1, lr 0.1, weight decay 0.2, betas (0.9, 0.999),
    eps 1e-8. Without decay both would climb to 1.2.

    Adam (g' = g + wd w): step 1 g' = 0.1 (the decay flips the sign), the first bias-corrected
    step is lr * sign = 0.1, w = 0.9; step 2 g' = -0.1 + 0.18 = 0.08, m = 0.9*0.01 + 0.1*0.08 =
    0.017, v = 0.999*1e-5 + 0.001*0.0064 = 1.639e-5, m^ = 0.017/0.19 = 0.0894737,
    v^ = 1.639e-5/0.001999 = 0.0081991, w = 0.9 - 0.1 * 0.0894737 / 0.0905489 = 0.801187.
    AdamW: w <- w (1 - lr wd) then the Adam step of g alone (+0.1 each time):
    1 * 0.98 + 0.1 = 1.08, then 1.08 * 0.98 + 0.1 = 1.1584."""
    def run(name):
        w = torch.nn.Parameter(torch.ones(1))
        opt = make_optimizer(name, [w], lr=0.1)
        for g in opt.param_groups:
            g["weight_decay"], g["eps"] = 0.2, 1e-8
        out = []
        for _ in range(2):
            w.grad = torch.full((1,), -0.1)
            opt.step()
            out.append(float(w.detach()))
        return out
    assert run("adam") == pytest.approx([0.9, 0.801187], abs=1e-6)
    assert run("adamw") == pytest.approx([1.08, 1.1584], abs=1e-6)
