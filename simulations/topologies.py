"""Gossip topologies by name: the graph families of decentralized runs and their mixing matrices.

`parse_topology(name, num_nodes, params, weights, seed)` builds a `Topology` (simulations/mixing.py) on n nodes:

    ring, complete, star           undirected; the star's center is node 0
    torus (rows=R, cols=C)         2-D periodic grid, node r * C + c, R * C = n; a missing side is n / the other,
                                   and with neither the most square R <= C is taken. A side of 2 gives one edge.
    regular (degree=D)             random D-regular graph (networkx), D * n even
    erdos_renyi (p=P)              G(n, P) conditioned on being connected
    edge_list (file=PATH)          undirected edges from a file, see `load_edge_list`
    exponential                    node i sends to i + 2^k (mod n) for every 2^k < n; weights 1 / (peers + 1)
    one_peer_exponential           time-varying: in step t node i takes 1/2 of itself and 1/2 of node
                                   i - 2^(t mod tau), tau = ceil(log2 n)
    directed_exponential           the exponential graph (one_peer=true: the one-peer one), kind "column" for push-sum

Undirected graphs must be connected and take `weights` "metropolis" (also when empty) or "uniform" (regular graphs
only, where it equals metropolis); they are of kind "symmetric". The exponential graphs have fixed weights
1 / (peers + 1), take "uniform" (or empty) and are of kind "doubly" (directed_exponential: "column"). Random graphs are drawn by networkx from
`seed`, then seed + 1, ... until one is connected (at most MAX_DRAWS draws), so each seed gives one graph.
Parameters may be numbers or strings; file paths are relative to the working directory.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import networkx as nx
import scipy.sparse as sp

from simulations import mixing as mx
from simulations.mixing import Topology

MAX_DRAWS = 100


# ---- graphs ------------------------------------------------------------------------------------------------------


def ring_graph(n: int) -> nx.Graph:
    """The cycle on n nodes (one edge for n = 2, none for n = 1)."""
    return nx.cycle_graph(n) if n > 2 else nx.path_graph(n)


def torus_shape(n: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) with rows * cols = n; the most square one (rows <= cols) where both are missing."""
    if rows is None and cols is None:
        rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    if rows is None or cols is None:
        given = rows if rows is not None else cols
        if given < 1 or n % given:
            raise ValueError(f"torus side {given} does not divide num_nodes={n}")
        rows, cols = (given, n // given) if rows is not None else (n // given, given)
    if rows < 1 or cols < 1 or rows * cols != n:
        raise ValueError(f"torus needs rows * cols = num_nodes, got {rows} * {cols} != {n}")
    return rows, cols


def torus_graph(rows: int, cols: int) -> nx.Graph:
    """The 2-D periodic grid: node r * cols + c joins its neighbours up, down, left and right (mod the sides)."""
    graph = nx.Graph()
    graph.add_nodes_from(range(rows * cols))
    for r in range(rows):
        for c in range(cols):
            for other in (((r + 1) % rows) * cols + c, r * cols + (c + 1) % cols):
                if other != r * cols + c:
                    graph.add_edge(r * cols + c, other)
    return graph


def _connected_draw(draw: Callable[[int], nx.Graph], seed: int, what: str) -> nx.Graph:
    """The first connected graph among draw(seed), draw(seed + 1), ..., at most MAX_DRAWS draws."""
    for attempt in range(MAX_DRAWS):
        graph = draw(seed + attempt)
        if nx.is_connected(graph):
            return graph
    raise ValueError(f"{what}: no connected graph in {MAX_DRAWS} draws (seeds {seed}..{seed + MAX_DRAWS - 1})")


def regular_graph(n: int, degree: int, seed: int) -> nx.Graph:
    """A connected random `degree`-regular graph on n nodes."""
    if not 0 <= degree < n or degree * n % 2:
        raise ValueError(f"regular needs 0 <= degree < num_nodes and degree * num_nodes even, got {degree}, {n}")
    return _connected_draw(lambda s: nx.random_regular_graph(degree, n, seed=s), seed, f"regular(degree={degree})")


def erdos_renyi_graph(n: int, p: float, seed: int) -> nx.Graph:
    """A connected G(n, p) graph (raise p if none comes: connectivity needs p above about ln(n) / n)."""
    if not 0 <= p <= 1:
        raise ValueError(f"erdos_renyi needs 0 <= p <= 1, got {p}")
    return _connected_draw(lambda s: nx.gnp_random_graph(n, p, seed=s), seed, f"erdos_renyi(p={p}, n={n})")


def load_edge_list(path: str, n: int) -> nx.Graph:
    """The undirected graph in file `path`: one edge `u v` or `u,v` a line, nodes 0..n-1. Blank lines, lines that
    start with `#` and a first line without numbers (a CSV header) are skipped; repeated edges count once."""
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    with open(path) as file:
        lines = [(number, line.strip()) for number, line in enumerate(file, 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if lines and not re.search(r"\d", lines[0][1]):
        lines = lines[1:]
    for number, line in lines:
        fields = re.split(r"\s*,\s*|\s+", line)
        if len(fields) != 2 or not all(re.fullmatch(r"-?\d+", value) for value in fields):
            raise ValueError(f"{path}:{number}: expected two integer node ids 'u v', got {line!r}")
        u, v = int(fields[0]), int(fields[1])
        if not (0 <= u < n and 0 <= v < n):
            raise ValueError(f"{path}:{number}: node {u if not 0 <= u < n else v} is out of range 0..{n - 1}")
        if u == v:
            raise ValueError(f"{path}:{number}: self loop at node {u}")
        graph.add_edge(u, v)
    return graph


def exponential_offsets(n: int) -> list[int]:
    """The powers of two below n: node i's out-peers are i + offset (mod n)."""
    return [2**k for k in range((n - 1).bit_length())]


def circulant(n: int, offsets: Sequence[int]) -> sp.csr_matrix:
    """Node i keeps 1/(peers + 1) and sends as much to each i + offset (mod n): W[i, i - offset] = 1/(peers + 1)."""
    weight = 1.0 / (len(offsets) + 1)
    return mx.sparse_matrix(n, ((i, (i - offset) % n, weight) for i in range(n) for offset in (0, *offsets)))


def exponential_topology(n: int, one_peer: bool, kind: str) -> Topology:
    """The static exponential graph on n nodes, or (one_peer) its tau one-peer graphs, as a Topology of `kind`."""
    offsets = exponential_offsets(n)
    matrices = [circulant(n, [offset]) for offset in offsets] if one_peer and offsets else [circulant(n, offsets)]
    name = ("one_peer_" if one_peer else "") + ("directed_" if kind == "column" else "") + "exponential"
    return Topology(name, tuple(matrices), kind)


# ---- spec --------------------------------------------------------------------------------------------------------

PARAMETERS: dict[str, tuple[str, ...]] = {
    "ring": (), "torus": ("rows", "cols"), "complete": (), "star": (), "regular": ("degree",),
    "erdos_renyi": ("p",), "edge_list": ("file",),
    "exponential": (), "one_peer_exponential": (), "directed_exponential": ("one_peer",),
}
REQUIRED: dict[str, tuple[str, ...]] = {"regular": ("degree",), "erdos_renyi": ("p",), "edge_list": ("file",)}


_KIND_TEXT = {int: "an integer", float: "a number", bool: "true or false", str: "a non-empty string"}


def _get(params: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """params[key] as `kind` (int, float, bool or str), from a number or a string; `default` when missing."""
    if key not in params:
        return default
    value, text = params[key], str(params[key]).strip().lower()
    if kind is bool and text in ("true", "false", "1", "0"):
        return text in ("true", "1")
    if kind is int and not isinstance(value, (bool, float)) and re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if kind is float and not isinstance(value, bool) and text not in ("nan", "inf", "-inf", "infinity"):
        try:
            return float(text)
        except ValueError:
            pass
    if kind is str and isinstance(value, str) and value:
        return value
    raise ValueError(f"topology parameter {key} must be {_KIND_TEXT[kind]}, got {value!r}")


def _graph(name: str, n: int, params: Mapping[str, Any], seed: int) -> nx.Graph:
    """The undirected graph `name` on n nodes."""
    if name == "ring":
        return ring_graph(n)
    if name == "torus":
        return torus_graph(*torus_shape(n, _get(params, "rows", int), _get(params, "cols", int)))
    if name == "complete":
        return nx.complete_graph(n)
    if name == "star":
        return nx.star_graph(n - 1)
    if name == "regular":
        return regular_graph(n, _get(params, "degree", int), seed)
    if name == "erdos_renyi":
        return erdos_renyi_graph(n, _get(params, "p", float), seed)
    return load_edge_list(_get(params, "file", str), n)


def parse_topology(name: str, num_nodes: int, params: Mapping[str, Any], weights: str, seed: int) -> Topology:
    """The topology `name` on `num_nodes` nodes; see the module docstring for names, params and weights."""
    if name not in PARAMETERS:
        raise ValueError(f"unknown topology {name!r}; choose one of {sorted(PARAMETERS)}")
    allowed = ", ".join(PARAMETERS[name]) or "no parameters"
    for key in params:
        if key not in PARAMETERS[name]:
            raise ValueError(f"topology {name!r}: unknown parameter {key!r}; it takes {allowed}")
    for key in REQUIRED.get(name, ()):
        if key not in params:
            raise ValueError(f"topology {name!r}: missing parameter {key!r}; it takes {allowed}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, numbers.Integral) or num_nodes < 1:
        raise ValueError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if name.endswith("exponential"):
        if weights not in ("", "uniform"):
            raise ValueError(f"{name} has fixed weights 1/(peers + 1): weights must be 'uniform', got {weights!r}")
        one_peer = name == "one_peer_exponential" or _get(params, "one_peer", bool, False)
        return exponential_topology(int(num_nodes), one_peer, "column" if name == "directed_exponential" else "doubly")
    weights = weights or "metropolis"
    if weights not in mx.WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {sorted(mx.WEIGHTS)}")
    graph = _graph(name, int(num_nodes), params, int(seed))
    if not nx.is_connected(graph):
        parts = sorted(nx.connected_components(graph), key=min)
        raise ValueError(f"{name}: the graph is disconnected ({len(parts)} components; node {min(parts[1])} "
                         f"cannot reach node 0)")
    return Topology(name, (mx.WEIGHTS[weights](graph),), "symmetric")
