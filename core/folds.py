"""Cross-validation splits per patient.

nnU-Net v2 (``generate_crossval_split``): scikit-learn ``KFold(n_splits=5, shuffle=True,
random_state=12345)`` over the sorted case identifiers. The same call here gives users the same
folds as nnU-Net on the same ids, so fold-wise numbers are comparable.
"""
from __future__ import annotations

from sklearn.model_selection import KFold

NNUNET_SPLIT_SEED = 12345


def kfold_splits(ids, n_splits: int = 5, seed: int = NNUNET_SPLIT_SEED) -> list[dict[str, list[str]]]:
    """``[{'train': [...], 'val': [...]}, ...]`` for each fold; ids are sorted first."""
    ids = sorted(set(ids))
    if len(ids) < n_splits:
        raise ValueError(f"{len(ids)} case(s) cannot be split into {n_splits} folds")
    kf = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [{"train": [ids[i] for i in tr], "val": [ids[i] for i in va]} for tr, va in kf.split(ids)]
