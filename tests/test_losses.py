"""Losses: hand-computed values, textbook reference formulas, empty targets, deep supervision."""

import math

import pytest
import torch

from core.losses import (LOSSES, DeepSupervisionLoss, cross_entropy_loss, deep_supervision_weights,
                         dice_ce_focal_loss, dice_ce_loss, dice_focal_loss, downsample_target, focal_loss,
                         get_loss, soft_dice_loss)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMOOTH = 1e-5


def logits_from_probs(fg):
    """Two-class logits whose softmax is exactly (1 - fg, fg); shape (B, 2, *spatial)."""
    fg = torch.as_tensor(fg, dtype=torch.float64)
    return torch.stack([torch.log1p(-fg), torch.log(fg)], dim=1)


# One sample, four voxels (as a 1x1x4 volume): foreground probabilities and labels.
P_FG = [[[[0.9, 0.2, 0.6, 0.1]]]]
LABELS = torch.tensor([[[[1, 0, 1, 0]]]])


def test_soft_dice_hand_computed():
    logits = logits_from_probs(P_FG)
    # foreground only: I = 0.9 + 0.6 = 1.5, sum p = 1.8, sum y = 2 -> (3 + s) / (3.8 + s)
    fg_dice = (3.0 + SMOOTH) / (3.8 + SMOOTH)
    assert soft_dice_loss(logits, LABELS).item() == pytest.approx(1 - fg_dice, abs=1e-7)
    # label map given as (B, 1, ...) gives the same
    assert soft_dice_loss(logits, LABELS[:, None]).item() == pytest.approx(1 - fg_dice, abs=1e-7)
    # background too: I = 0.8 + 0.9 = 1.7, sum p = 2.2, sum y = 2 -> (3.4 + s) / (4.2 + s)
    bg_dice = (3.4 + SMOOTH) / (4.2 + SMOOTH)
    value = soft_dice_loss(logits, LABELS, include_background=True).item()
    assert value == pytest.approx(1 - (fg_dice + bg_dice) / 2, abs=1e-7)


def test_batch_dice_versus_per_sample_dice():
    # sample 0 as above; sample 1: p = (0.5, 0.5, 0.5, 0.5), y = (0, 0, 0, 1)
    logits = logits_from_probs([P_FG[0], [[[0.5, 0.5, 0.5, 0.5]]]])
    labels = torch.tensor([[[[1, 0, 1, 0]]], [[[0, 0, 0, 1]]]])
    d0 = (3.0 + SMOOTH) / (3.8 + SMOOTH)
    d1 = (1.0 + SMOOTH) / (3.0 + SMOOTH)  # I = 0.5, sum p = 2, sum y = 1
    # pooled over both samples: I = 1.5 + 0.5, sum p = 1.8 + 2.0, sum y = 2 + 1
    batch = (2 * 2.0 + SMOOTH) / (3.8 + 3.0 + SMOOTH)
    assert soft_dice_loss(logits, labels, batch_dice=False).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-7)
    assert soft_dice_loss(logits, labels, batch_dice=True).item() == pytest.approx(1 - batch, abs=1e-7)


def test_cross_entropy_and_focal_hand_computed():
    logits = logits_from_probs(P_FG)
    p_true = [0.9, 0.8, 0.6, 0.9]
    assert cross_entropy_loss(logits, LABELS).item() == pytest.approx(
        -sum(math.log(p) for p in p_true) / 4, abs=1e-6)
    focal = [-(1 - p) ** 2 * math.log(p) for p in p_true]
    assert focal_loss(logits, LABELS).item() == pytest.approx(sum(focal) / 4, abs=1e-6)
    # alpha 0.25 -> weight 0.25 on foreground voxels (0 and 2), 0.75 on background
    weights = [0.25, 0.75, 0.25, 0.75]
    assert focal_loss(logits, LABELS, alpha=0.25).item() == pytest.approx(
        sum(w * f for w, f in zip(weights, focal)) / 4, abs=1e-6)
    assert focal_loss(logits, LABELS, alpha=[0.75, 0.25]).item() == pytest.approx(
        sum(w * f for w, f in zip(weights, focal)) / 4, abs=1e-6)
    # gamma 0 is cross-entropy
    assert focal_loss(logits, LABELS, gamma=0).item() == pytest.approx(cross_entropy_loss(logits, LABELS).item())


def test_compound_losses_are_sums():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 4, 4, 4))
    dice, ce, fl = soft_dice_loss(logits, labels), cross_entropy_loss(logits, labels), focal_loss(logits, labels)
    torch.testing.assert_close(dice_ce_loss(logits, labels), dice + ce)
    torch.testing.assert_close(dice_focal_loss(logits, labels), dice + fl)
    torch.testing.assert_close(dice_ce_focal_loss(logits, labels), dice + ce + fl)
    assert set(LOSSES) == {"dice", "batch_dice", "dice_ce", "dice_focal", "dice_ce_focal"}
    assert get_loss("dice_ce") is dice_ce_loss
    with pytest.raises(ValueError, match="dice_ce_focal"):
        get_loss("dice_only")


def test_plain_and_batch_dice_and_focal_parameters():
    """Hand-computed: one class-1 voxel per sample, sample 0 predicted right (p=1), sample 1 wrong
    (p=0): per-sample Dice 1 and 0 -> loss 0.5; batch Dice 2*1/(1+2) -> loss 1/3 (smooth ~0)."""
    big = 30.0
    logits = torch.zeros(2, 2, 2, 1, 1)
    labels = torch.zeros(2, 2, 1, 1, dtype=torch.long)
    labels[:, 0] = 1                                   # voxel 0 of each sample is tumour
    logits[0, 1, 0], logits[0, 0, 1] = big, big        # sample 0: right everywhere
    logits[1, 0, 0], logits[1, 0, 1] = big, big        # sample 1: background everywhere
    assert float(get_loss("dice")(logits, labels)) == pytest.approx(0.5, abs=1e-4)
    assert float(get_loss("batch_dice")(logits, labels)) == pytest.approx(1 - 2 / 3, abs=1e-4)
    # focal parameters reach the focal term; a parameter the loss does not take is refused
    lg, lb = torch.randn(2, 2, 3, 3, 3), torch.randint(0, 2, (2, 3, 3, 3))
    torch.testing.assert_close(get_loss("dice_focal", gamma=0.5, alpha=0.25)(lg, lb),
                               soft_dice_loss(lg, lb) + focal_loss(lg, lb, gamma=0.5, alpha=0.25))
    assert not torch.allclose(get_loss("dice_focal", gamma=0.5)(lg, lb), get_loss("dice_focal")(lg, lb))
    with pytest.raises(ValueError, match="takes no parameter 'gamma'"):
        get_loss("dice_ce", gamma=1.0)


def test_dice_ce_equals_monai_dice_ce_definition():
    """MONAI DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, batch=True,
    smooth_nr=smooth_dr=1e-5), written out: CE + 1 - mean_c (2 sum p y + 1e-5) / (sum p + sum y + 1e-5),
    sums over batch and space, c = 1..K-1; CE = mean over voxels of -log softmax at the label."""
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 4, 3, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 5, 4, 3))
    p = logits.softmax(1)
    y = torch.stack([(labels[:, 0] == c).double() for c in range(3)], dim=1)
    dice_terms = []
    for c in range(1, 3):
        inter = (p[:, c] * y[:, c]).sum()
        denom = p[:, c].sum() + y[:, c].sum()
        dice_terms.append((2 * inter + 1e-5) / (denom + 1e-5))
    ce = -(torch.log(p) * y).sum(1).mean()
    reference = ce + 1 - sum(dice_terms) / 2
    assert abs(dice_ce_loss(logits, labels).item() - reference.item()) < 1e-5


def test_empty_target_gives_finite_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    for name, fn in LOSSES.items():
        logits.grad = None
        loss = fn(logits, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), name
    # no foreground: Dice = s / (sum p + s) ~ 0, so the Dice term is ~1
    assert soft_dice_loss(logits, labels).item() == pytest.approx(1.0, abs=1e-5)
    assert soft_dice_loss(logits, labels, batch_dice=False).item() == pytest.approx(1.0, abs=1e-5)


def test_perfect_prediction_has_zero_dice_loss():
    labels = torch.tensor([[[[1, 0, 1, 0]]]])
    logits = 50.0 * torch.stack([1 - labels.float(), labels.float()], dim=1)
    assert soft_dice_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("n, expected", [
    (1, [1.0]),
    (3, [2 / 3, 1 / 3, 0.0]),                       # (1, 1/2, 0) / 1.5
    (4, [4 / 7, 2 / 7, 1 / 7, 0.0]),                # (1, 1/2, 1/4, 0) / 1.75
    (5, [8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0]),     # (1, 1/2, 1/4, 1/8, 0) / 1.875
])
def test_deep_supervision_weights(n, expected):
    assert deep_supervision_weights(n) == pytest.approx(expected, abs=1e-12)


def test_downsample_target_nearest_exact():
    labels = torch.arange(8).view(1, 1, 8, 1, 1).expand(1, 1, 8, 2, 2)
    out = downsample_target(labels, (4, 1, 1))
    # nearest-exact samples the pixel centres: source voxel 2i+1
    assert out.shape == (1, 1, 4, 1, 1) and out.flatten().tolist() == [1, 3, 5, 7]
    assert out.dtype == labels.dtype
    same = downsample_target(labels[:, 0], (8, 2, 2))
    assert same.shape == (1, 1, 8, 2, 2)


def test_deep_supervision_loss_weights_and_target_resampling():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (2, 1, 8, 8, 8))
    outputs = [torch.randn(2, 2, 8, 8, 8), torch.randn(2, 2, 4, 4, 4), torch.randn(2, 2, 2, 2, 2)]
    wrapped = DeepSupervisionLoss(dice_ce_loss)
    expected = (2 / 3) * dice_ce_loss(outputs[0], labels) \
        + (1 / 3) * dice_ce_loss(outputs[1], labels[:, :, 1::2, 1::2, 1::2])
    torch.testing.assert_close(wrapped(outputs, labels), expected)
    # a single tensor is the plain loss
    torch.testing.assert_close(wrapped(outputs[0], labels), dice_ce_loss(outputs[0], labels))


def test_zero_weight_head_gets_zero_gradient():
    outputs = [torch.randn(1, 2, 4, 4, 4, requires_grad=True), torch.randn(1, 2, 2, 2, 2, requires_grad=True)]
    DeepSupervisionLoss(dice_ce_loss)(outputs, torch.randint(0, 2, (1, 4, 4, 4))).backward()
    assert outputs[1].grad is not None and outputs[1].grad.abs().max() == 0
    assert outputs[0].grad.abs().max() > 0


def test_bad_target_shape_raises():
    with pytest.raises(ValueError, match="does not match"):
        soft_dice_loss(torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 4, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="label map"):
        cross_entropy_loss(torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))


def test_get_loss_binds_focal_gamma_and_alpha_hand_computed():
    """P_FG / LABELS: p_true = (0.9, 0.8, 0.6, 0.9); alpha 0.25 weighs (0.25, 0.75, 0.25, 0.75).
    gamma 1: focal = mean(w (1 - p) (-log p)) = (0.25*0.1*0.1053605 + 0.75*0.2*0.2231436
    + 0.25*0.4*0.5108256 + 0.75*0.1*0.1053605) / 4 = 0.0950902 / 4 = 0.0237725;
    CE = (0.1053605 + 0.2231436 + 0.5108256 + 0.1053605) / 4 = 0.2361726;
    Dice loss = 1 - (3 + s) / (3.8 + s) = 0.2105258."""
    logits = logits_from_probs(P_FG)
    dice = 1 - (3.0 + SMOOTH) / (3.8 + SMOOTH)
    assert dice == pytest.approx(0.2105258, abs=1e-7)
    focal_g1_a25, ce = 0.0950902 / 4, 0.2361726
    assert get_loss("dice_focal", gamma=1.0, alpha=0.25)(logits, LABELS).item() == \
        pytest.approx(dice + focal_g1_a25, abs=1e-6)
    assert get_loss("dice_ce_focal", gamma=1.0, alpha=[0.75, 0.25])(logits, LABELS).item() == \
        pytest.approx(dice + ce + focal_g1_a25, abs=1e-6)
    # gamma alone keeps alpha's default (no weights): (0.01054 + 0.04463 + 0.20433 + 0.01054) / 4
    assert get_loss("dice_focal", gamma=1.0)(logits, LABELS).item() == \
        pytest.approx(dice + 0.2700311 / 4, abs=1e-6)
    # defaults unchanged: gamma 2, no alpha; None means "default" and returns the function itself
    focal_default = (0.01 * 0.1053605 + 0.04 * 0.2231436 + 0.16 * 0.5108256 + 0.01 * 0.1053605) / 4
    assert get_loss("dice_focal")(logits, LABELS).item() == pytest.approx(dice + focal_default, abs=1e-6)
    assert get_loss("dice_focal", gamma=None, alpha=None) is dice_focal_loss
    assert get_loss("dice_ce", gamma=None) is dice_ce_loss
    for name, param in [("dice_ce", "alpha"), ("dice", "gamma"), ("batch_dice", "alpha"), ("dice_focal", "beta")]:
        with pytest.raises(ValueError, match=f"loss '{name}' takes no parameter '{param}'"):
            get_loss(name, **{param: 0.5})
    from core.losses import LOSS_PARAMS
    assert set(LOSS_PARAMS) <= set(LOSSES)


def test_plain_and_batch_dice_reuse_the_soft_dice_of_dice_ce():
    """``dice`` is dice_ce without its CE term, per sample; ``batch_dice`` pools the batch (the
    hand-computed pair of test_batch_dice_versus_per_sample_dice)."""
    logits = logits_from_probs([P_FG[0], [[[0.5, 0.5, 0.5, 0.5]]]])
    labels = torch.tensor([[[[1, 0, 1, 0]]], [[[0, 0, 0, 1]]]])
    d0, d1 = (3.0 + SMOOTH) / (3.8 + SMOOTH), (1.0 + SMOOTH) / (3.0 + SMOOTH)
    pooled = (4.0 + SMOOTH) / (6.8 + SMOOTH)
    assert LOSSES["dice"](logits, labels).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-7)
    assert LOSSES["batch_dice"](logits, labels).item() == pytest.approx(1 - pooled, abs=1e-7)
    ce = cross_entropy_loss(logits, labels)
    torch.testing.assert_close(LOSSES["batch_dice"](logits, labels) + ce, dice_ce_loss(logits, labels))
    torch.testing.assert_close(LOSSES["dice"](logits, labels) + ce, dice_ce_loss(logits, labels, batch_dice=False))
