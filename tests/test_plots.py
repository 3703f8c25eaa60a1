"""Training curves (nnU-Net's progress.png): a real PNG, written atomically, the given values on
the panels, and a history without validation (NaN pseudo-Dice) still plotted."""
import math

import matplotlib.pyplot as plt
import pytest

from data import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(n=5, validated=True):
    return [{"epoch": e, "loss": 1.0 - 0.1 * e, "pseudo_dice": 0.1 * e if validated else math.nan,
             "ema": 0.05 * e if validated else math.nan, "lr": 0.01 * (1 - e / n) ** 0.9, "seconds": 30.0 + e}
            for e in range(n)]


@pytest.fixture
def drawn(monkeypatch):
    """The (label, x, y) of every line of the figure, captured just before it is saved."""
    lines = []
    save = plots._save

    def capture(fig, path):
        lines.extend((ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata()))
                     for ax in fig.axes for ln in ax.get_lines())
        return save(fig, path)
    monkeypatch.setattr(plots, "_save", capture)
    return lines


def test_training_curves_png_and_panels(tmp_path, drawn):
    path = plots.training_curves(_history(), tmp_path / "fold_0" / "progress.png", "run fold 0")
    assert path == tmp_path / "fold_0" / "progress.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in path.parent.iterdir()) == ["progress.png"]     # no temporary left
    by_label = {label: (x, y) for label, x, y in drawn}
    assert set(by_label) == {"train loss", "pseudo-Dice", "moving average", "learning rate", "epoch time (s)"}
    assert by_label["pseudo-Dice"][0] == [0, 1, 2, 3, 4]
    assert by_label["pseudo-Dice"][1] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert by_label["moving average"][1] == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert by_label["train loss"][1] == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6])
    assert by_label["learning rate"][1][0] == 0.01 and by_label["epoch time (s)"][1][-1] == 34.0
    assert not plt.get_fignums()                                                  # figure closed


def test_training_curves_without_validation_and_overwrite(tmp_path, drawn):
    path = tmp_path / "progress.png"
    plots.training_curves(_history(validated=False), path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    dice = next(y for label, _, y in drawn if label == "pseudo-Dice")
    assert all(math.isnan(v) for v in dice)
    first = path.read_bytes()
    plots.training_curves(_history(n=8), path)                                   # rewritten each epoch
    assert path.read_bytes()[:8] == PNG_SIGNATURE and path.read_bytes() != first
    # a missing value (None, or an absent key) is plotted as a gap like NaN
    plots.training_curves([{"epoch": 0, "loss": 0.5, "pseudo_dice": None, "lr": 0.01, "seconds": 1.0}],
                          tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:8] == PNG_SIGNATURE
