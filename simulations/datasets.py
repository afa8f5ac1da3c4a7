"""Centralized data sets, validation of user arrays, and turning a partition into FederatedData."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.datasets import load_digits

from simulations.federated_data import FederatedData

DIGITS_SAMPLES, DIGITS_CLASSES = 1797, 10  # what `digits()` returns, known without loading it (config checks)


def digits(as_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 samples, 10 classes, shipped offline), pixels scaled to [0, 1].

    Features are (n, 64) float32, or (n, 1, 8, 8) with `as_images`; labels are int64.
    """
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if as_images:
        x = x.reshape(-1, 1, 8, 8)
    return x, bunch.target.astype(np.int64)


def from_arrays(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check a user's features and labels and return them as (float32, int64) arrays.

    x needs at least 2 dimensions (samples first) of finite numbers; y is 1-D with integer labels >= 0,
    one per row of x.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must have a sample axis and feature axes (at least 2-D), got shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)} labels")
    if len(y) == 0:
        raise ValueError("x and y are empty")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be 0..C-1, found {y.min()}")
    return x.astype(np.float32), y.astype(np.int64)


def held_out_count(num_samples: int, test_fraction: float) -> int:
    """Rows of a client's samples held out for testing: ceil(test_fraction * n), keeping at least one for training."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    wanted = math.ceil(round(test_fraction * num_samples, 9))  # round: 0.1 * 30 is 3.0000000000000004
    return min(wanted, max(num_samples - 1, 0))


def stack_clients(
    name: str, num_classes: int, clients: Sequence[tuple[np.ndarray, np.ndarray]], test_fraction: float
) -> FederatedData:
    """Concatenate clients' (x, y) into FederatedData; the last held_out_count(n) rows of each client are its test split."""
    if not clients:
        raise ValueError("need at least one client")
    train, test = [], []
    for x, y in clients:
        cut = len(y) - held_out_count(len(y), test_fraction)
        train.append((x[:cut], y[:cut]))
        test.append((x[cut:], y[cut:]))

    def offsets(pieces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([len(y) for _, y in pieces])]).astype(np.int64)

    return FederatedData(
        name=name,
        num_classes=num_classes,
        x=np.concatenate([x for x, _ in train]).astype(np.float32, copy=False),
        y=np.concatenate([y for _, y in train]).astype(np.int64, copy=False),
        offsets=offsets(train),
        test_x=np.concatenate([x for x, _ in test]).astype(np.float32, copy=False),
        test_y=np.concatenate([y for _, y in test]).astype(np.int64, copy=False),
        test_offsets=offsets(test),
    )


def federate(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    parts: list[np.ndarray],
    num_classes: int,
    test_fraction: float,
    rng: np.random.Generator,
) -> FederatedData:
    """Give client i the rows parts[i] of (x, y), shuffled with rng, and hold out held_out_count(n) of them for testing.

    Parts must be disjoint index arrays into x; rows in no part are left out.
    """
    x, y = from_arrays(x, y)
    if y.max() >= num_classes:
        raise ValueError(f"label {y.max()} does not fit num_classes={num_classes}")
    parts = [np.asarray(part, dtype=np.int64) for part in parts]
    used = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if used.size and (used.min() < 0 or used.max() >= len(y)):
        raise ValueError(f"partition indices must lie in [0, {len(y)})")
    if len(np.unique(used)) != len(used):
        raise ValueError("partition parts overlap: some row is given to more than one client")
    shuffled = [rng.permutation(part) for part in parts]
    return stack_clients(name, num_classes, [(x[rows], y[rows]) for rows in shuffled], test_fraction)
