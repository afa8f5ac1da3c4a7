"""The federated data set every scenario produces: each client's arrays stored back to back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FederatedData:
    """Train and test samples of every client, concatenated; client i owns rows offsets[i]:offsets[i + 1].

    The central test set is the union of the clients' test splits (as LEAF evaluates).
    """

    name: str
    num_classes: int
    x: np.ndarray  # (num_train, *feature_shape) float32
    y: np.ndarray  # (num_train,) int64
    offsets: np.ndarray  # (num_clients + 1,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    test_offsets: np.ndarray

    def __post_init__(self) -> None:
        for xs, ys, offs, part in ((self.x, self.y, self.offsets, "train"), (self.test_x, self.test_y, self.test_offsets, "test")):
            if len(xs) != len(ys) or offs[0] != 0 or offs[-1] != len(ys) or np.any(np.diff(offs) < 0):
                raise ValueError(f"{part} arrays and offsets of {self.name!r} do not line up")
        if len(self.offsets) != len(self.test_offsets):
            raise ValueError("train and test offsets name different numbers of clients")

    @property
    def num_clients(self) -> int:
        return len(self.offsets) - 1

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def train_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def test_sizes(self) -> np.ndarray:
        return np.diff(self.test_offsets)

    def client_train(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[client_id], self.offsets[client_id + 1]
        return self.x[lo:hi], self.y[lo:hi]

    def client_test(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.test_offsets[client_id], self.test_offsets[client_id + 1]
        return self.test_x[lo:hi], self.test_y[lo:hi]

    def label_histogram(self) -> np.ndarray:
        """(num_clients, num_classes) counts of each label in each client's training data."""
        client_of_row = np.repeat(np.arange(self.num_clients), self.train_sizes())
        hist = np.zeros((self.num_clients, self.num_classes), dtype=np.int64)
        np.add.at(hist, (client_of_row, self.y), 1)
        return hist
