"""core.stats.bootstrap_statistic: the percentile interval of any statistic of resampled cases."""
import numpy as np
import pytest

from core.stats import bootstrap_means, bootstrap_statistic


def test_statistic_interval_of_the_mean_equals_the_mean_bootstrap():
    v = np.random.default_rng(0).normal(size=40)
    lo, hi = bootstrap_statistic(lambda i: float(v[i].mean()), v.size, n_boot=500, seed=7)
    ref = np.quantile(bootstrap_means(v, 500, 7), [0.025, 0.975])      # the same resamples
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-12)


def test_single_class_resamples_are_skipped_and_nothing_left_is_nan():
    y = np.array([0, 1])
    seen = []

    def stat(i):
        seen.append(sorted(y[i].tolist()))
        return 1.0
    assert bootstrap_statistic(stat, 2, y=y, n_boot=200, seed=1) == (1.0, 1.0)
    assert seen and all(s == [0, 1] for s in seen) and len(seen) < 200   # [0,0] and [1,1] left out
    lo, hi = bootstrap_statistic(lambda i: float("nan"), 5, n_boot=20)
    assert np.isnan(lo) and np.isnan(hi)
