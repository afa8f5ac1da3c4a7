"""Tests of simulations/topologies.py and simulations/mixing.py: graphs, mixing weights, checks, gossip behaviour."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simulations.mixing import (
    Topology,
    check_column_stochastic,
    check_doubly_stochastic,
    check_symmetric,
    metropolis_weights,
    push_sum_weights,
    spectral_gap,
    uniform_weights,
)
from simulations.topologies import PARAMETERS, exponential_offsets, load_edge_list, parse_topology, torus_shape

FAST = settings(max_examples=40, deadline=None)
UNDIRECTED = {"ring": {}, "torus": {}, "complete": {}, "star": {}, "regular": {"degree": 3},
              "erdos_renyi": {"p": 0.4}}
EXPONENTIAL = {"exponential": {}, "one_peer_exponential": {}, "directed_exponential": {},
               "directed_exponential:one_peer": {"one_peer": "true"}}


def build(name: str, n: int, weights: str | None = None, seed: int = 0, **params) -> Topology:
    """parse_topology with the weights each family takes by default."""
    weights = weights or ("uniform" if name.endswith("exponential") else "metropolis")
    return parse_topology(name, n, params, weights, seed)


def dense(topology: Topology, round: int = 0, step: int = 0) -> np.ndarray:
    return topology.mixing(round, step).toarray()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "edges.txt"
    path.write_text(text)
    return str(path)


# ---- hand-checked matrices ---------------------------------------------------------------------------------------


def test_ring_of_four_gives_a_third_to_itself_and_each_side():
    # Execute
    W = dense(build("ring", 4))
    # Assert
    third = 1 / 3
    np.testing.assert_allclose(W, [[third, third, 0, third], [third, third, third, 0],
                                   [0, third, third, third], [third, 0, third, third]], rtol=0, atol=1e-15)


def test_star_center_averages_everyone_and_leaves_keep_most():
    # Execute: MH on a star of 5: leaves have degree 1, the center 4, so every edge weighs 1 / 5
    W = dense(build("star", 5))
    # Assert
    np.testing.assert_allclose(W[0], np.full(5, 0.2))
    np.testing.assert_allclose(W[3], [0.2, 0, 0, 0.8, 0])
    assert build("star", 5).in_degrees().tolist() == [4, 1, 1, 1, 1]


def test_complete_graph_is_the_exact_average():
    np.testing.assert_allclose(dense(build("complete", 5)), np.full((5, 5), 0.2), rtol=0, atol=1e-15)


def test_exponential_graph_of_eight_sends_to_the_next_powers_of_two():
    # Execute
    topology = build("exponential", 8)
    W = dense(topology)
    # Assert: node 0 receives from itself and from 0 - 1, 0 - 2, 0 - 4 (mod 8), a quarter each
    assert exponential_offsets(8) == [1, 2, 4]
    np.testing.assert_allclose(W[0], [0.25, 0, 0, 0, 0.25, 0, 0.25, 0.25])
    assert [receiver for sender, receiver in topology.edges(0) if sender == 0] == [1, 2, 4]
    assert topology.directed and not topology.time_varying and topology.kind == "doubly"
    check_doubly_stochastic(W)
    with pytest.raises(ValueError, match="not symmetric"):
        check_symmetric(W)


def test_torus_shapes_and_degrees():
    # Execute
    square = build("torus", 16)
    narrow = build("torus", 6, rows=2)
    # Assert: 4 x 4 has four neighbours each; a side of 2 gives one edge, so 2 x 3 has three
    assert torus_shape(12) == (3, 4) and torus_shape(7) == (1, 7) and torus_shape(12, cols=6) == (2, 6)
    assert set(square.out_degrees().tolist()) == {4} and set(narrow.out_degrees().tolist()) == {3}
    np.testing.assert_allclose(dense(square)[5, [1, 4, 5, 6, 9]], np.full(5, 0.2))
    with pytest.raises(ValueError, match="rows \\* cols = num_nodes"):
        build("torus", 12, rows=3, cols=5)
    with pytest.raises(ValueError, match="does not divide"):
        build("torus", 12, rows=5)


def test_tiny_networks_have_valid_matrices():
    for name in [*UNDIRECTED, "exponential", "one_peer_exponential", "directed_exponential"]:
        if name in ("regular", "erdos_renyi"):
            continue
        # Execute
        one, two = build(name, 1), build(name, 2)
        # Assert
        np.testing.assert_array_equal(dense(one), [[1.0]])
        np.testing.assert_allclose(dense(two), np.full((2, 2), 0.5))
        assert one.spectral_gap() == 1.0 and two.spectral_gap() == pytest.approx(1.0)


# ---- every family: the structure it claims -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNDIRECTED))
@pytest.mark.parametrize("n", [6, 8, 12])
def test_undirected_graphs_are_connected_symmetric_doubly_stochastic(name, n):
    # Execute
    topology = build(name, n, **UNDIRECTED[name])
    W = dense(topology)
    # Assert
    check_symmetric(W)
    check_doubly_stochastic(W)
    assert topology.kind == "symmetric" and not topology.directed and not topology.time_varying
    assert nx.is_connected(nx.from_numpy_array(W - np.diag(np.diag(W))))
    assert topology.mixing(0).dtype == np.float64 and topology.mixing(0).shape == (n, n)
    assert all(s != r and W[r, s] > 0 for s, r in topology.edges(3))
    np.testing.assert_array_equal(topology.in_degrees(), topology.out_degrees())


@pytest.mark.parametrize("name", sorted(EXPONENTIAL))
@pytest.mark.parametrize("n", [5, 8, 16])
def test_exponential_graphs_are_stochastic_in_the_way_they_claim(name, n):
    # Execute
    topology = build(name.split(":")[0], n, **EXPONENTIAL[name])
    # Assert
    for t in range(topology.period):
        W = dense(topology, t)
        check_column_stochastic(W)
        if topology.kind == "doubly":
            check_doubly_stochastic(W)
    tau = math.ceil(math.log2(n))
    one_peer = name.startswith("one_peer") or name.endswith("one_peer")
    assert topology.period == (tau if one_peer else 1)
    assert set(topology.out_degrees().tolist()) == {1 if one_peer else tau}
    assert topology.kind == ("column" if name.startswith("directed") else "doubly")


def test_one_peer_exponential_takes_half_from_one_peer_cycling_powers_of_two():
    # Execute
    topology = build("one_peer_exponential", 8)
    # Assert: step k, node 5 takes 1/2 of itself and 1/2 of 5 - 2^(k mod 3)
    for k, peer in [(0, 4), (1, 3), (2, 1), (3, 4)]:
        row = dense(topology, k)[5]
        assert row[5] == 0.5 and row[peer] == 0.5 and np.count_nonzero(row) == 2


def test_parse_topology_covers_every_name():
    assert sorted(PARAMETERS) == sorted([*UNDIRECTED, "edge_list", "exponential", "one_peer_exponential",
                                         "directed_exponential"])


# ---- checks ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "check, matrix, message",
    [
        (check_doubly_stochastic, [[0.5, 0.5], [0.5, 0.4]], "row 1 sums to 0.9"),
        (check_doubly_stochastic, [[0.5, 0.5], [0.0, 1.0]], "column 0 sums to 0.5"),
        (check_column_stochastic, [[0.5, 0.0], [0.4, 1.0]], "column 0 sums to 0.9"),
        (check_column_stochastic, [[1.5, 0.0], [-0.5, 1.0]], "negative entry W[1, 0]"),
        (check_symmetric, [[0.5, 0.5], [0.4, 0.6]], "W[0, 1] = 0.5 but W[1, 0] = 0.4"),
        (check_symmetric, [[1.0, 0.0, 0.0]], "must be square"),
        (check_doubly_stochastic, [[np.nan, 0.0], [0.0, 1.0]], "NaN or infinite"),
    ],
)
def test_checks_name_what_fails(check, matrix, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check(np.array(matrix))


def test_checks_allow_rounding_within_1e_12_only():
    # Prepare
    off = 1 / 3 + 1e-13
    W = np.array([[off, 1 - off], [1 - off, off]])
    # Execute / Assert
    check_doubly_stochastic(W)
    check_doubly_stochastic(sp.csr_matrix(W))
    with pytest.raises(ValueError, match="row 0"):
        check_doubly_stochastic(W + np.array([[2e-12, 0], [0, 0]]))


def test_topology_checks_the_kind_it_claims():
    # Prepare: column-stochastic but not doubly stochastic, and doubly stochastic but not symmetric
    P = np.array([[0.5, 0.0], [0.5, 1.0]])
    cycle = np.roll(np.eye(3), 1, axis=1)
    # Execute / Assert
    assert Topology("P", (P,), "column").kind == "column"
    with pytest.raises(ValueError, match="matrix 0 is not doubly: not row stochastic: row 0"):
        Topology("P", (P,), "doubly")
    with pytest.raises(ValueError, match="is not symmetric: not symmetric"):
        Topology("cycle", (cycle,), "symmetric")
    with pytest.raises(ValueError, match="kind must be one of"):
        Topology("cycle", (cycle,), "row")
    with pytest.raises(ValueError, match="one shape"):
        Topology("two", (np.eye(2), np.eye(3)), "symmetric")


def test_uniform_weights_equal_metropolis_on_regular_graphs_and_refuse_others():
    # Prepare
    ring = nx.cycle_graph(6)
    # Execute / Assert
    np.testing.assert_allclose(uniform_weights(ring).toarray(), metropolis_weights(ring).toarray(), atol=1e-15)
    with pytest.raises(ValueError, match="only on a regular graph, but degrees range from 1 to 4"):
        build("star", 5, weights="uniform")
    assert build("regular", 8, weights="uniform", degree=3).kind == "symmetric"


@given(n=st.integers(2, 14), p=st.floats(0.15, 1.0), seed=st.integers(0, 2**16))
@FAST
def test_random_connected_graphs_give_symmetric_doubly_stochastic_metropolis_weights(n, p, seed):
    # Prepare
    graph = nx.gnp_random_graph(n, p, seed=seed)
    assume(nx.is_connected(graph))
    # Execute
    W = metropolis_weights(graph).toarray()
    # Assert
    check_symmetric(W)
    check_doubly_stochastic(W)
    assert W.min() >= 0 and np.all(np.diag(W) > 0)
    assert 0 < spectral_gap(W) <= 1 + 1e-12


# ---- random graphs -----------------------------------------------------------------------------------------------


def test_regular_graph_has_the_degree_and_is_deterministic_per_seed():
    # Execute
    first, again, other = (build("regular", 12, seed=s, degree=3) for s in (5, 5, 6))
    # Assert
    assert set(first.out_degrees().tolist()) == {3}
    assert first.edges(0) == again.edges(0) and first.edges(0) != other.edges(0)
    with pytest.raises(ValueError, match="degree \\* num_nodes even"):
        build("regular", 7, degree=3)
    with pytest.raises(ValueError, match="no connected graph in 100 draws"):
        build("regular", 6, degree=1)


@given(n=st.integers(2, 20), seed=st.integers(0, 2**16))
@FAST
def test_erdos_renyi_is_connected_and_deterministic_per_seed(n, seed):
    # Execute
    first = build("erdos_renyi", n, seed=seed, p=0.5)
    again = build("erdos_renyi", n, seed=seed, p="0.5")
    # Assert
    assert nx.is_connected(nx.Graph(first.edges(0)))
    assert first.edges(0) == again.edges(0)


def test_erdos_renyi_redraws_until_connected_and_gives_up_clearly():
    # Prepare: with p = 0.2 on 12 nodes, networkx's draws from seeds 0..3 are disconnected and seed 4's is not
    draws = [nx.gnp_random_graph(12, 0.2, seed=s) for s in range(5)]
    assert [nx.is_connected(graph) for graph in draws] == [False] * 4 + [True]
    # Execute
    topology = build("erdos_renyi", 12, seed=0, p=0.2)
    # Assert
    assert topology.edges(0) == sorted([*draws[4].edges, *((v, u) for u, v in draws[4].edges)])
    with pytest.raises(ValueError, match=re.escape("no connected graph in 100 draws (seeds 3..102)")):
        build("erdos_renyi", 30, seed=3, p=0.01)


# ---- edge lists --------------------------------------------------------------------------------------------------


def test_edge_list_reads_whitespace_csv_comments_and_a_header(tmp_path):
    # Prepare
    spaced = write(tmp_path, "# a square with a diagonal\n0 1\n1\t2\n\n2 3\n3 0\n0 2\n2 0\n")
    # Execute
    graph = load_edge_list(spaced, 4)
    topology = build("edge_list", 4, file=spaced)
    (tmp_path / "edges.csv").write_text("u,v\n0, 1\n1,2\n2,3\n3,0\n0,2\n")
    from_csv = build("edge_list", 4, file=str(tmp_path / "edges.csv"))
    # Assert
    assert sorted(graph.edges) == [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)]
    assert topology.edges(0) == from_csv.edges(0)
    np.testing.assert_allclose(dense(topology)[1], [1 / 4, 1 / 2, 1 / 4, 0])


@pytest.mark.parametrize(
    "text, message",
    [
        ("0 1\n1 4\n", "edges.txt:2: node 4 is out of range 0..3"),
        ("0 1\n-1 2\n", "node -1 is out of range"),
        ("0 1\n2 2\n", "edges.txt:2: self loop at node 2"),
        ("0 1\n1 2 3\n", "expected two integer node ids"),
        ("0 1\n1 x\n", "expected two integer node ids"),
        ("0 1\n2 3\n", "the graph is disconnected (2 components; node 2 cannot reach node 0)"),
        ("0 1\n1 2\n", "disconnected"),
    ],
)
def test_edge_list_refuses_bad_files_clearly(tmp_path, text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build("edge_list", 4, file=write(tmp_path, text))


# ---- spec errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, params, weights, message",
    [
        ("hypercube", {}, "metropolis", "unknown topology 'hypercube'; choose one of ["),
        ("ring", {"degree": 2}, "metropolis", "unknown parameter 'degree'; it takes no parameters"),
        ("regular", {}, "metropolis", "missing parameter 'degree'; it takes degree"),
        ("torus", {"side": 3}, "metropolis", "unknown parameter 'side'; it takes rows, cols"),
        ("regular", {"degree": "three"}, "metropolis", "degree must be an integer, got 'three'"),
        ("regular", {"degree": 2.5}, "metropolis", "degree must be an integer, got 2.5"),
        ("erdos_renyi", {"p": "half"}, "metropolis", "p must be a number, got 'half'"),
        ("erdos_renyi", {"p": "nan"}, "metropolis", "p must be a number, got 'nan'"),
        ("edge_list", {"file": 3}, "metropolis", "file must be a non-empty string, got 3"),
        ("erdos_renyi", {"p": 1.5}, "metropolis", "0 <= p <= 1"),
        ("ring", {}, "laplacian", "unknown weights 'laplacian'; choose one of ['metropolis', 'uniform']"),
        ("exponential", {}, "metropolis", "fixed weights 1/(peers + 1): weights must be 'uniform'"),
        ("directed_exponential", {"one_peer": "maybe"}, "uniform", "one_peer must be true or false, got 'maybe'"),
    ],
)
def test_parse_topology_refuses_bad_specs_clearly(name, params, weights, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_topology(name, 8, params, weights, 0)


def test_parse_topology_refuses_bad_sizes_and_seeds():
    with pytest.raises(ValueError, match="num_nodes must be an integer >= 1"):
        parse_topology("ring", 0, {}, "metropolis", 0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        parse_topology("ring", 4, {}, "metropolis", -1)


# ---- rounds and steps --------------------------------------------------------------------------------------------


def test_time_varying_steps_follow_round_times_steps_per_round():
    # Prepare
    topology = build("one_peer_exponential", 8)
    twice = dataclasses.replace(topology, steps_per_round=2)
    # Execute / Assert
    assert [topology.index(r) for r in range(5)] == [0, 1, 2, 0, 1]
    assert [twice.index(r, s) for r in range(3) for s in range(2)] == [0, 1, 2, 0, 1, 2]
    assert twice.mixing(1, 1) is twice.matrices[0]
    with pytest.raises(ValueError, match="time-varying with steps_per_round=1, got step 1"):
        topology.mixing(0, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        topology.mixing(-1)
    static = build("ring", 5)
    assert static.mixing(7, 3) is static.mixing(0)


# ---- spectral gap and gossip -------------------------------------------------------------------------------------


def test_spectral_gaps_order_ring_exponential_complete_and_ring_matches_closed_form():
    # Execute
    ring, exponential, complete = (build(name, 16).spectral_gap() for name in ("ring", "exponential", "complete"))
    # Assert
    assert ring < exponential < complete == pytest.approx(1.0)
    for n in (5, 8, 16, 33):
        assert build("ring", n).spectral_gap() == pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / n)),
                                                                 abs=1e-12)


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_one_peer_exponential_averages_exactly_over_one_period(n):
    # Execute
    topology = build("one_peer_exponential", n)
    product = topology.period_product().toarray()
    # Assert: Ying et al. 2021: tau one-peer steps give (1/n) 1 1^T
    np.testing.assert_allclose(product, np.full((n, n), 1 / n), rtol=0, atol=1e-15)
    assert topology.spectral_gap() == pytest.approx(1.0)


def test_one_peer_exponential_is_not_exact_when_n_is_not_a_power_of_two():
    product = build("one_peer_exponential", 6).period_product().toarray()
    assert np.abs(product - 1 / 6).max() > 0.01


@pytest.mark.parametrize("name, n, params", [("ring", 8, {}), ("torus", 16, {}), ("star", 6, {}),
                                              ("exponential", 16, {}), ("regular", 10, {"degree": 3})])
def test_gossip_converges_to_the_average_contracting_by_lambda_2(name, n, params):
    # Prepare
    topology = build(name, n, **params)
    W = topology.mixing(0)
    start = np.random.default_rng(1).normal(size=n) + 5
    x = start - start.mean()  # zero mean: rounding stays relative to the shrinking disagreement
    lambda_2 = 1 - topology.spectral_gap()
    # Execute
    norms = []
    for _ in range(100):
        x = W @ x
        norms.append(np.linalg.norm(x - x.mean()))
    averaged = start
    for _ in range(1000):
        averaged = W @ averaged
    # Assert
    assert norms[-1] / norms[-2] == pytest.approx(lambda_2, abs=1e-6)
    np.testing.assert_allclose(averaged, np.full(n, start.mean()), rtol=0, atol=1e-10)


def test_push_sum_ratio_finds_the_average_on_a_directed_ring_where_plain_mixing_does_not():
    # Prepare: the directed ring 0 -> 1 -> ... -> 5 -> 0 with a chord 0 -> 3; node 0 splits its value in three
    graph = nx.DiGraph([(i, (i + 1) % 6) for i in range(6)] + [(0, 3)])
    topology = Topology("directed ring", (push_sum_weights(graph),), "column")
    P = topology.mixing(0)
    x = np.random.default_rng(2).uniform(1, 2, size=6)
    numerator, weight = x.copy(), np.ones(6)
    # Execute
    for _ in range(300):
        numerator, weight = P @ numerator, P @ weight
    # Assert
    assert topology.directed and not topology.doubly_stochastic
    assert numerator.sum() == pytest.approx(x.sum())
    np.testing.assert_allclose(numerator / weight, np.full(6, x.mean()), rtol=0, atol=1e-10)
    assert np.abs(numerator - x.mean()).max() > 0.1 * x.mean()
