"""Mixing matrices for gossip: weights on a graph, checks, spectral gap, and the `Topology` that schedules them.

Convention (BlueFog, decentralizepy; specs/algorithms.md C.0): a gossip step is x_i <- sum_j W_ij x_j, so row i
holds the weights node i gives to what it receives, and W_ij != 0 for j != i means that j sends to i.

* `metropolis_weights` (Metropolis-Hastings): w_ij = 1 / (1 + max(d_i, d_j)) for each neighbour j, w_ii = 1 - sum.
  Symmetric and doubly stochastic on every undirected graph.
* `uniform_weights`: 1 / (d_i + 1) for each neighbour and for itself. Row-stochastic on any graph, but symmetric and
  doubly stochastic only on a regular graph (where it equals Metropolis-Hastings), so it refuses the others.
* `push_sum_weights`: the column-stochastic matrix of a directed graph for push-sum (SGP, specs C.3): node j keeps
  1 / (outdeg_j + 1) of its value and sends as much to each out-neighbour, so column j sums to 1.

Degrees d_i count neighbours, not the node itself. Graphs have nodes 0..n-1 and no self loops.

A `Topology` holds the matrices of one period (one matrix for a static graph). Its `kind` is what it claims and
checks on construction (tolerance 1e-12): "symmetric" (symmetric, doubly stochastic: undirected graphs), "doubly"
(doubly stochastic: exponential graphs) or "column" (column-stochastic: push-sum; rows need not sum to 1).
Gossip step `step` of round `round` is step t = round * steps_per_round + step of the schedule and uses matrix
t mod period. steps_per_round is 1 unless set with `dataclasses.replace(topology, steps_per_round=Q)`; a
time-varying topology refuses step >= steps_per_round, a static one ignores round and step.

Spectral gap: 1 - |lambda_2| of W for a static topology. For a time-varying one it is that of the product of one
period W_{p-1} ... W_0, a contraction over p steps rather than one: the one-peer exponential graph on n = 2^tau
nodes has gap 1, as its tau matrices average exactly (Ying et al., NeurIPS 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, reduce

import networkx as nx
import numpy as np
import scipy.sparse as sp

TOLERANCE = 1e-12
KINDS = ("symmetric", "doubly", "column")
Matrix = sp.spmatrix | sp.sparray | np.ndarray


def sparse_matrix(n: int, entries: Iterable[tuple[int, int, float]]) -> sp.csr_matrix:
    """An n x n float64 CSR matrix from (row, column, value) entries (repeats are summed), indices sorted."""
    listed = list(entries)
    rows, cols, values = zip(*listed) if listed else ((), (), ())
    matrix = sp.csr_matrix((np.array(values, dtype=np.float64), (rows, cols)), shape=(n, n), dtype=np.float64)
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _check_graph(graph: nx.Graph) -> int:
    """The number of nodes, after checking that they are 0..n-1 and that there is no self loop."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError(f"graph nodes must be 0..{n - 1}, got {sorted(graph.nodes)[:10]}...")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise ValueError(f"graph has a self loop at node {loops[0][0]}; weights give each node its own share")
    return n


def metropolis_weights(graph: nx.Graph) -> sp.csr_matrix:
    """Metropolis-Hastings weights of an undirected graph: symmetric, doubly stochastic."""
    n = _check_graph(graph)
    degree = dict(graph.degree)
    entries = []
    for i, j in graph.edges:
        weight = 1.0 / (1 + max(degree[i], degree[j]))
        entries += [(i, j, weight), (j, i, weight)]
    taken = np.zeros(n)
    for i, _, weight in entries:
        taken[i] += weight
    return sparse_matrix(n, [*entries, *((i, i, 1.0 - taken[i]) for i in range(n))])


def uniform_weights(graph: nx.Graph) -> sp.csr_matrix:
    """1 / (d + 1) for each neighbour and self on a d-regular undirected graph; refuses a non-regular one."""
    n = _check_graph(graph)
    degrees = sorted({d for _, d in graph.degree})
    if len(degrees) > 1:
        raise ValueError(
            f"uniform weights are doubly stochastic only on a regular graph, but degrees range from {degrees[0]} to "
            f"{degrees[-1]}; use metropolis weights"
        )
    weight = 1.0 / (degrees[0] + 1) if degrees else 1.0
    pairs = [(i, j) for i, j in graph.edges] + [(j, i) for i, j in graph.edges] + [(i, i) for i in range(n)]
    return sparse_matrix(n, ((i, j, weight) for i, j in pairs))


def push_sum_weights(graph: nx.DiGraph) -> sp.csr_matrix:
    """Column-stochastic push-sum weights of a directed graph (edge u -> v: u sends to v): P[v, u] = 1/(outdeg_u+1)."""
    n = _check_graph(graph)
    share = {u: 1.0 / (graph.out_degree(u) + 1) for u in range(n)}
    return sparse_matrix(n, [*((v, u, share[u]) for u, v in graph.edges), *((u, u, share[u]) for u in range(n))])


WEIGHTS: dict[str, Callable[[nx.Graph], sp.csr_matrix]] = {"metropolis": metropolis_weights, "uniform": uniform_weights}


# ---- checks ------------------------------------------------------------------------------------------------------


def _as_csr(matrix: Matrix) -> sp.csr_matrix:
    """`matrix` as a float64 CSR matrix after checking that it is square, finite and non-negative."""
    csr = sp.csr_matrix(matrix, dtype=np.float64)
    if csr.shape[0] != csr.shape[1]:
        raise ValueError(f"a mixing matrix must be square, got shape {csr.shape}")
    if not np.all(np.isfinite(csr.data)):
        raise ValueError("mixing matrix has a NaN or infinite entry")
    if csr.nnz and csr.data.min() < 0:
        coo = csr.tocoo()
        k = int(np.argmin(coo.data))
        raise ValueError(f"mixing matrix has a negative entry W[{coo.row[k]}, {coo.col[k]}] = {float(coo.data[k])!r}")
    return csr


def _check_sums(matrix: Matrix, axis: int, what: str, tol: float) -> None:
    """Raise ValueError naming the first row (axis 1) or column (axis 0) whose sum is not 1 within `tol`."""
    sums = np.asarray(_as_csr(matrix).sum(axis=axis)).ravel()
    bad = np.flatnonzero(np.abs(sums - 1.0) > tol)
    if bad.size:
        total = float(sums[bad[0]])
        raise ValueError(f"not {what} stochastic: {what} {bad[0]} sums to {total!r}, not 1 (tolerance {tol})")


def check_row_stochastic(matrix: Matrix, tol: float = TOLERANCE) -> None:
    """Raise ValueError unless every row is non-negative and sums to 1."""
    _check_sums(matrix, 1, "row", tol)


def check_column_stochastic(matrix: Matrix, tol: float = TOLERANCE) -> None:
    """Raise ValueError unless every column is non-negative and sums to 1 (what push-sum needs)."""
    _check_sums(matrix, 0, "column", tol)


def check_doubly_stochastic(matrix: Matrix, tol: float = TOLERANCE) -> None:
    """Raise ValueError unless every row and every column is non-negative and sums to 1."""
    check_row_stochastic(matrix, tol)
    check_column_stochastic(matrix, tol)


def check_symmetric(matrix: Matrix, tol: float = TOLERANCE) -> None:
    """Raise ValueError naming the first entry with |W_ij - W_ji| > tol."""
    csr = _as_csr(matrix)
    gap = abs(csr - csr.T).tocoo()
    bad = np.flatnonzero(gap.data > tol)
    if bad.size:
        i, j = int(gap.row[bad[0]]), int(gap.col[bad[0]])
        raise ValueError(f"not symmetric: W[{i}, {j}] = {float(csr[i, j])!r} but W[{j}, {i}] = {float(csr[j, i])!r}")


def passes(check: Callable[[Matrix], None], matrix: Matrix) -> bool:
    """Whether `check(matrix)` returns without raising ValueError."""
    try:
        check(matrix)
    except ValueError:
        return False
    return True


def spectral_gap(matrix: Matrix) -> float:
    """1 - |lambda_2|: one minus the second largest eigenvalue modulus (1.0 for a 1 x 1 matrix).

    Dense eigenvalues (numpy), from `eigvalsh` when the matrix is symmetric: O(n^3), seconds at n = 1000.
    """
    dense = sp.csr_matrix(matrix, dtype=np.float64).toarray()
    if dense.shape[0] < 2:
        return 1.0
    values = np.linalg.eigvalsh(dense) if passes(check_symmetric, dense) else np.linalg.eigvals(dense)
    moduli = np.sort(np.abs(values))[::-1]
    return float(1.0 - moduli[1])


# ---- topology ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Topology:
    """The mixing matrices of one period of gossip steps (one for a static topology), checked against `kind`."""

    name: str
    matrices: tuple[sp.csr_matrix, ...] = field(repr=False)
    kind: str
    steps_per_round: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not self.matrices or self.steps_per_round < 1:
            raise ValueError(f"{self.name}: needs >= 1 matrix and steps_per_round >= 1, got {self.steps_per_round}")
        n = self.matrices[0].shape[0]
        if any(m.shape != (n, n) for m in self.matrices):
            shapes = [m.shape for m in self.matrices]
            raise ValueError(f"{self.name}: matrices must be square and of one shape, got {shapes}")
        matrices = tuple(sparse_matrix(n, zip(*sp.find(m))) for m in self.matrices)
        for t, matrix in enumerate(matrices):
            try:
                (check_column_stochastic if self.kind == "column" else check_doubly_stochastic)(matrix)
                if self.kind == "symmetric":
                    check_symmetric(matrix)
            except ValueError as error:
                raise ValueError(f"{self.name}: matrix {t} is not {self.kind}: {error}") from None
        object.__setattr__(self, "matrices", matrices)

    @property
    def num_nodes(self) -> int:
        return self.matrices[0].shape[0]

    @property
    def period(self) -> int:
        """How many steps before the matrices repeat (1: static)."""
        return len(self.matrices)

    @property
    def time_varying(self) -> bool:
        return self.period > 1

    @cached_property
    def directed(self) -> bool:
        """Whether some step has an edge j -> i without i -> j."""
        patterns = [(m != 0).astype(np.int8) for m in self.matrices]
        return any((pattern != pattern.T).nnz > 0 for pattern in patterns)

    @cached_property
    def doubly_stochastic(self) -> bool:
        """Whether every matrix is doubly stochastic (true of kinds symmetric and doubly, and may be of column)."""
        return self.kind != "column" or all(passes(check_doubly_stochastic, m) for m in self.matrices)

    def index(self, round: int, step: int = 0) -> int:
        """Which of the period's matrices gossip step `step` of round `round` uses."""
        if round < 0 or step < 0:
            raise ValueError(f"round and step must be >= 0, got round={round}, step={step}")
        if self.time_varying and step >= self.steps_per_round:
            raise ValueError(
                f"{self.name} is time-varying with steps_per_round={self.steps_per_round}, got step {step}; "
                f"set steps_per_round (dataclasses.replace) to the number of gossip steps per round"
            )
        return (round * self.steps_per_round + step) % self.period

    def mixing(self, round: int, step: int = 0) -> sp.csr_matrix:
        """W of the step: float64 CSR, row i the weights node i gives to each j (do not modify it)."""
        return self.matrices[self.index(round, step)]

    @cached_property
    def _edges(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        found = (sp.find(m) for m in self.matrices)
        return tuple(tuple(sorted((int(j), int(i)) for i, j, _ in zip(*f) if i != j)) for f in found)

    def edges(self, round: int, step: int = 0) -> list[tuple[int, int]]:
        """(sender, receiver) pairs of the step, sender != receiver, sorted."""
        return list(self._edges[self.index(round, step)])

    def in_degrees(self, round: int = 0, step: int = 0) -> np.ndarray:
        """How many other nodes each node receives from in the step."""
        return self._count(round, step, 1)

    def out_degrees(self, round: int = 0, step: int = 0) -> np.ndarray:
        """How many other nodes each node sends to in the step (its messages)."""
        return self._count(round, step, 0)

    def _count(self, round: int, step: int, column: int) -> np.ndarray:
        edges = np.array(self.edges(round, step), dtype=np.int64).reshape(-1, 2)
        return np.bincount(edges[:, column], minlength=self.num_nodes)

    def period_product(self) -> sp.csr_matrix:
        """W_{p-1} ... W_0: the mixing of one whole period (W itself for a static topology)."""
        return reduce(lambda product, matrix: (matrix @ product).tocsr(), self.matrices[1:], self.matrices[0])

    def spectral_gap(self) -> float:
        """1 - |lambda_2| of W (static) or of the period's product (time-varying); see the module docstring."""
        return spectral_gap(self.period_product())

