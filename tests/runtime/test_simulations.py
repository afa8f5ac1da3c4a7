"""Tests of simulations/: synthetic data, real data sets, partitioners, availability."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.availability import availability_probabilities, available_clients
from simulations.datasets import digits, federate, from_arrays, held_out_count
from simulations.partitions import PARTITIONERS, dirichlet, iid, label_histogram, partition, quantity_skew, shards
from simulations.synthetic import synthetic, synthetic_client

FAST = settings(max_examples=30, deadline=None)


def random_labels(num_samples: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, num_samples)


# ---- synthetic -------------------------------------------------------------------------------------------------


def test_synthetic_client_made_alone_equals_client_inside_data_set():
    # Prepare
    data = synthetic(num_clients=20, alpha=1.0, beta=1.0, seed=3)
    # Execute
    x, y = synthetic_client(7, alpha=1.0, beta=1.0, seed=3)
    # Assert
    train_x, train_y = data.client_train(7)
    test_x, test_y = data.client_test(7)
    np.testing.assert_array_equal(np.concatenate([train_x, test_x]), x)
    np.testing.assert_array_equal(np.concatenate([train_y, test_y]), y)


def test_synthetic_shapes_dtypes_and_split():
    # Execute
    data = synthetic(num_clients=5, alpha=0.5, beta=0.5, seed=0, test_fraction=0.2)
    # Assert
    assert data.num_clients == 5 and data.num_classes == 10 and data.feature_shape == (60,)
    assert data.x.dtype == np.float32 and data.test_x.dtype == np.float32
    assert data.y.dtype == np.int64 and data.test_y.dtype == np.int64
    assert data.y.min() >= 0 and max(data.y.max(), data.test_y.max()) <= 9
    sizes = data.train_sizes() + np.diff(data.test_offsets)
    assert np.all(sizes >= 50)
    np.testing.assert_array_equal(np.diff(data.test_offsets), [held_out_count(n, 0.2) for n in sizes])


def test_synthetic_different_seeds_differ_same_seed_repeats():
    # Execute
    x0, _ = synthetic_client(0, 1.0, 1.0, seed=0)
    x1, _ = synthetic_client(0, 1.0, 1.0, seed=1)
    x0_again, _ = synthetic_client(0, 1.0, 1.0, seed=0)
    other_client, _ = synthetic_client(1, 1.0, 1.0, seed=0)
    # Assert
    assert x0.shape != x1.shape or not np.array_equal(x0, x1)
    assert x0.shape != other_client.shape or not np.array_equal(x0, other_client)
    np.testing.assert_array_equal(x0, x0_again)


def test_synthetic_all_ten_classes_appear():
    # Execute
    data = synthetic(num_clients=30, alpha=1.0, beta=1.0, seed=0)
    # Assert
    assert set(np.unique(data.y)) == set(range(10))


def test_synthetic_beta_moves_client_feature_means_apart():
    # Prepare
    def spread_of_client_means(beta: float) -> float:
        means = [synthetic_client(c, 0.0, beta, seed=0)[0].mean() for c in range(30)]
        return float(np.std(means))

    # Execute / Assert
    assert spread_of_client_means(5.0) > 2 * spread_of_client_means(0.0)


def test_synthetic_within_client_feature_variance_is_j_to_the_minus_1_2():
    # Prepare: pool each client's deviations from its own feature means
    clients = [synthetic_client(c, 1.0, 1.0, seed=0)[0] for c in range(20)]
    deviations = np.concatenate([x - x.mean(axis=0) for x in clients])
    # Execute
    variance = deviations.var(axis=0)
    # Assert
    np.testing.assert_allclose(variance, np.arange(1, 61) ** -1.2, rtol=0.15)


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError):
        synthetic(0, 1.0, 1.0, seed=0)
    with pytest.raises(ValueError):
        synthetic_client(0, -1.0, 1.0, seed=0)


# ---- data sets and federate ------------------------------------------------------------------------------------


def test_digits_loads_scaled_flat_and_as_images():
    # Execute
    x, y = digits()
    images, _ = digits(as_images=True)
    # Assert
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    assert images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(images.reshape(1797, 64), x)


@pytest.mark.parametrize(
    "x, y",
    [
        (np.zeros(5), np.zeros(5, dtype=int)),  # x 1-D
        (np.zeros((5, 2)), np.zeros((5, 1), dtype=int)),  # y 2-D
        (np.zeros((5, 2)), np.zeros(4, dtype=int)),  # lengths differ
        (np.zeros((5, 2)), np.full(5, 0.5)),  # float labels
        (np.zeros((5, 2)), np.array([0, 1, -1, 0, 1])),  # negative label
        (np.full((5, 2), np.nan), np.zeros(5, dtype=int)),  # NaN features
        (np.zeros((0, 2)), np.zeros(0, dtype=int)),  # empty
    ],
)
def test_from_arrays_rejects_bad_input(x, y):
    with pytest.raises(ValueError):
        from_arrays(x, y)


def test_from_arrays_converts_dtypes():
    # Execute
    x, y = from_arrays(np.arange(6, dtype=np.float64).reshape(3, 2), np.array([0, 2, 1], dtype=np.int32))
    # Assert
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 2, 1])


@given(num_samples=st.integers(5, 200), num_clients=st.integers(1, 5), seed=st.integers(0, 2**16))
@FAST
def test_federate_round_trips_every_row_once(num_samples, num_clients, seed):
    # Prepare: row i holds the value i, so rows can be traced
    x = np.arange(num_samples, dtype=np.float32)[:, None].repeat(3, axis=1)
    y = random_labels(num_samples, 4, seed)
    parts = iid(y, num_clients, np.random.default_rng(seed))
    # Execute
    data = federate("toy", x, y, parts, 4, 0.25, np.random.default_rng(seed))
    # Assert
    rows = np.concatenate([data.x[:, 0], data.test_x[:, 0]]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(rows), np.arange(num_samples))
    np.testing.assert_array_equal(np.concatenate([data.y, data.test_y]), y[rows])
    for client, part in enumerate(parts):
        train_x, _ = data.client_train(client)
        test_x, _ = data.client_test(client)
        assert set(np.concatenate([train_x[:, 0], test_x[:, 0]]).astype(int)) == set(part.tolist())
        assert len(train_x) >= 1


def test_federate_rejects_overlapping_parts_and_large_labels():
    # Prepare
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    rng = np.random.default_rng(0)
    # Execute / Assert
    with pytest.raises(ValueError, match="overlap"):
        federate("toy", x, y, [np.array([0, 1]), np.array([1, 2])], 2, 0.0, rng)
    with pytest.raises(ValueError, match="num_classes"):
        federate("toy", x, y, [np.array([0, 1])], 1, 0.0, rng)


def test_held_out_count_is_ceil_and_keeps_a_training_row():
    assert [held_out_count(n, 0.1) for n in (30, 31, 50, 1, 0)] == [3, 4, 5, 0, 0]
    with pytest.raises(ValueError):
        held_out_count(10, 1.0)


# ---- partitions ------------------------------------------------------------------------------------------------


def assert_exact_cover(parts: list[np.ndarray], num_samples: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(len(part) > 0 for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_samples))


@given(num_samples=st.integers(1, 300), num_clients=st.integers(1, 30), seed=st.integers(0, 2**16))
@FAST
def test_iid_covers_every_index_once_with_balanced_sizes(num_samples, num_clients, seed):
    # Prepare
    num_clients = min(num_clients, num_samples)
    labels = random_labels(num_samples, 5, seed)
    # Execute
    parts = iid(labels, num_clients, np.random.default_rng(seed))
    # Assert
    assert_exact_cover(parts, num_samples, num_clients)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


@given(
    num_samples=st.integers(20, 300),
    num_clients=st.integers(1, 20),
    alpha=st.sampled_from([0.01, 0.1, 1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
@FAST
def test_dirichlet_covers_every_index_once_and_no_client_is_empty(num_samples, num_clients, alpha, seed):
    # Prepare
    labels = random_labels(num_samples, 10, seed)
    # Execute
    parts = dirichlet(labels, num_clients, alpha, np.random.default_rng(seed))
    # Assert
    assert_exact_cover(parts, num_samples, num_clients)


def test_dirichlet_min_size_is_guaranteed():
    # Execute
    parts = dirichlet(random_labels(500, 10, 0), 40, 0.05, np.random.default_rng(0), min_size=5)
    # Assert
    assert min(len(part) for part in parts) >= 5
    assert_exact_cover(parts, 500, 40)


def test_small_dirichlet_alpha_skews_labels_more_than_large():
    # Prepare
    labels = random_labels(5000, 10, 0)

    def mean_top_label_fraction(alpha: float) -> float:
        parts = dirichlet(labels, 20, alpha, np.random.default_rng(1))
        hist = label_histogram(labels, parts, 10)
        return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))

    # Execute
    skewed, balanced = mean_top_label_fraction(0.1), mean_top_label_fraction(100.0)
    # Assert
    assert skewed > 0.5 > 0.2 > balanced


@given(
    num_samples=st.integers(60, 300),
    num_clients=st.integers(5, 20),
    classes_per_client=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
@FAST
def test_shards_cover_every_index_once_with_few_labels_per_client(num_samples, num_clients, classes_per_client, seed):
    # Prepare
    labels = random_labels(num_samples, 5, seed)
    # Execute
    parts = shards(labels, num_clients, classes_per_client, np.random.default_rng(seed))
    # Assert
    assert_exact_cover(parts, num_samples, num_clients)
    hist = label_histogram(labels, parts, 5)
    assert np.all((hist > 0).sum(axis=1) <= classes_per_client)


def test_quantity_skew_sizes_vary_and_cover_every_index():
    # Prepare
    labels = random_labels(2000, 10, 0)
    # Execute
    parts = quantity_skew(labels, 20, np.random.default_rng(0), sigma=1.5)
    equal = quantity_skew(labels, 20, np.random.default_rng(0), sigma=0.0)
    # Assert
    assert_exact_cover(parts, 2000, 20)
    sizes = np.array([len(part) for part in parts])
    assert sizes.max() > 3 * sizes.min()
    assert {len(part) for part in equal} == {100}


@given(num_clients=st.integers(1, 10), seed=st.integers(0, 2**16), name=st.sampled_from(sorted(PARTITIONERS)))
@FAST
def test_label_histogram_rows_sum_to_client_sizes(num_clients, seed, name):
    # Prepare
    labels = random_labels(200, 4, seed)
    options = {"dirichlet": {"alpha": 0.5}, "shards": {"classes_per_client": 4}}.get(name, {})
    parts = partition(name, labels, num_clients, np.random.default_rng(seed), **options)
    # Execute
    hist = label_histogram(labels, parts, 4)
    # Assert
    assert hist.shape == (num_clients, 4)
    np.testing.assert_array_equal(hist.sum(axis=1), [len(part) for part in parts])
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels, minlength=4))


def test_partitions_are_reproducible_from_the_rng_seed():
    labels = random_labels(300, 10, 0)
    for name, options in [("iid", {}), ("dirichlet", {"alpha": 0.3}), ("shards", {"classes_per_client": 2}), ("quantity_skew", {})]:
        first = partition(name, labels, 10, np.random.default_rng(5), **options)
        second = partition(name, labels, 10, np.random.default_rng(5), **options)
        assert all(np.array_equal(a, b) for a, b in zip(first, second)), name


@pytest.mark.parametrize(
    "call",
    [
        lambda labels: iid(labels, 11, np.random.default_rng(0)),  # more clients than samples
        lambda labels: iid(labels, 0, np.random.default_rng(0)),
        lambda labels: iid(labels.astype(float), 2, np.random.default_rng(0)),
        lambda labels: dirichlet(labels, 2, 0.0, np.random.default_rng(0)),
        lambda labels: dirichlet(labels, 5, 1.0, np.random.default_rng(0), min_size=3),
        lambda labels: shards(labels, 1, 1, np.random.default_rng(0)),  # 1 shard, 2 classes
        lambda labels: shards(labels, 5, 0, np.random.default_rng(0)),
        lambda labels: quantity_skew(labels, 2, np.random.default_rng(0), sigma=-1.0),
        lambda labels: partition("nope", labels, 2, np.random.default_rng(0)),
    ],
)
def test_partitioners_reject_bad_input(call):
    with pytest.raises(ValueError):
        call(np.array([0, 1] * 5))


def test_partition_error_lists_allowed_names():
    with pytest.raises(ValueError, match="dirichlet"):
        partition("label_skew", np.zeros(10, dtype=int), 2, np.random.default_rng(0))


# ---- availability ----------------------------------------------------------------------------------------------


def test_availability_probabilities_lie_in_range():
    # Execute
    probabilities = availability_probabilities(1000, 0.2, 0.6, np.random.default_rng(0))
    # Assert
    assert probabilities.shape == (1000,)
    assert probabilities.min() >= 0.2 and probabilities.max() <= 0.6
    with pytest.raises(ValueError):
        availability_probabilities(10, 0.7, 0.6, np.random.default_rng(0))


def test_available_clients_frequencies_match_probabilities():
    # Prepare
    probabilities = np.array([0.1, 0.5, 0.9, 0.3])
    rng = np.random.default_rng(0)
    rounds = 4000
    # Execute
    counts = np.zeros(4)
    for _ in range(rounds):
        online = available_clients(probabilities, rng)
        assert np.all(np.diff(online) > 0)  # sorted, no repeats
        counts[online] += 1
    # Assert: the most likely client also fills in for the rounds where nobody came online
    expected = probabilities.copy()
    expected[2] += np.prod(1 - probabilities)
    np.testing.assert_allclose(counts / rounds, expected, atol=0.02)


def test_available_clients_falls_back_to_most_likely_client():
    # Execute
    rare = [available_clients(np.array([0.0, 1e-12, 0.0]), np.random.default_rng(seed)) for seed in range(5)]
    never = [available_clients(np.array([0.0, 0.0]), np.random.default_rng(seed)) for seed in range(5)]
    # Assert
    assert all(ids.tolist() == [1] for ids in rare)
    assert all(ids.tolist() == [0] for ids in never)
