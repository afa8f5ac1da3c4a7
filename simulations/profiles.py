"""Per-client device and network profiles for a virtual clock.

Each client gets five numbers and shares one availability model:

    compute         seconds per training sample             finite, >= 0
    bandwidth_up    bytes per second, client to server      > 0; inf = unlimited
    bandwidth_down  bytes per second, server to client      > 0; inf = unlimited
    latency         fixed seconds per task                  finite, >= 0
    dropout         probability that a task fails           in [0, 1]

A task takes latency + download_bytes / bandwidth_down + samples * compute + upload_bytes / bandwidth_up seconds.

Numbers come from distribution specs: `constant:value=V`, `uniform:low=A,high=B` or `lognormal:median=M,sigma=S`
(numpy's lognormal with mean=log(M)); values may be written as `1e6` or `inf`. `sample_profiles` draws every field
from its own generator `np.random.default_rng([seed, FIELD_INDEX[field]])`, so adding or changing one field never
changes another's draws. The indices are fixed: compute 0, bandwidth_up 1, bandwidth_down 2, latency 3, dropout 4;
a new field takes the next unused index.

A table CSV replaces distributions by measured device types. Its header has `client` (an integer id, unique) and any
of the five field names above, in the units above. Rows are sorted by `client`, and client i takes row i % rows, so
a short table of device types covers any number of clients.

Availability follows FedScale: a client must be online when selected and when it finishes.
`always` is always online. `bernoulli:p=P` is online at each selection with probability P, judged from a uniform
draw the caller makes. `trace:file=PATH,period=SECONDS` reads a CSV with header `trace,start,end`: each row is an
online interval [start, end) in seconds within one period, traces have integer ids (several rows each), client i
follows the (i % T)-th id in ascending order of the T distinct ids, and time is taken modulo the period.
Spec values cannot contain `,` or `=`; file paths are relative to the working directory.
"""

from __future__ import annotations

import csv
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

FIELD_INDEX: dict[str, int] = {"compute": 0, "bandwidth_up": 1, "bandwidth_down": 2, "latency": 3, "dropout": 4}
DEFAULTS: dict[str, str] = {
    "compute": "constant:value=0",
    "bandwidth_up": "constant:value=inf",
    "bandwidth_down": "constant:value=inf",
    "latency": "constant:value=0",
    "dropout": "constant:value=0",
    "availability": "always",
}
_ALLOWED: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "compute": (lambda v: np.isfinite(v) & (v >= 0), "finite and >= 0"),
    "bandwidth_up": (lambda v: v > 0, "> 0 (inf = unlimited)"),
    "bandwidth_down": (lambda v: v > 0, "> 0 (inf = unlimited)"),
    "latency": (lambda v: np.isfinite(v) & (v >= 0), "finite and >= 0"),
    "dropout": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
}


# ---- spec strings ------------------------------------------------------------------------------------------------


def _split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name:key=value,key=value` as (name, {key: value})."""
    if not isinstance(spec, str):
        raise ValueError(f"a spec must be a string such as 'constant:value=1', got {spec!r}")
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = (text.strip() for text in item.partition("="))
        if not sep:
            raise ValueError(f"{spec!r}: expected key=value, got {item!r}")
        if key in params:
            raise ValueError(f"{spec!r}: parameter {key!r} given twice")
        params[key] = value
    return name.strip(), params


def _expect(spec: str, params: Mapping[str, str], names: Sequence[str]) -> None:
    """Raise ValueError unless `params` has exactly the keys `names`."""
    takes = ", ".join(names) if names else "no parameters"
    for key in params:
        if key not in names:
            raise ValueError(f"{spec!r}: unknown parameter {key!r}; it takes {takes}")
    for name in names:
        if name not in params:
            raise ValueError(f"{spec!r}: missing parameter {name!r}; it takes {takes}")


def _number(text: str, what: str) -> float:
    """`text` as a float (`1e6` and `inf` allowed, nan not)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if math.isnan(value):
        raise ValueError(f"{what} must be a number, got nan")
    return value


# ---- distributions -----------------------------------------------------------------------------------------------


class Distribution(ABC):
    """A distribution of a non-negative per-client quantity."""

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` independent draws as a float64 array."""

    @property
    @abstractmethod
    def maximum(self) -> float:
        """The largest value a draw can take (inf if unbounded)."""


@dataclass(frozen=True)
class Constant(Distribution):
    """Always `value`."""

    value: float

    def __post_init__(self) -> None:
        if not self.value >= 0:
            raise ValueError(f"constant needs value >= 0, got {self.value}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, self.value, dtype=np.float64)

    @property
    def maximum(self) -> float:
        return self.value


@dataclass(frozen=True)
class Uniform(Distribution):
    """Uniform in [low, high)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high < math.inf:
            raise ValueError(f"uniform needs 0 <= low <= high < inf, got low={self.low}, high={self.high}")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)

    @property
    def maximum(self) -> float:
        return self.high


@dataclass(frozen=True)
class LogNormal(Distribution):
    """exp(N(log(median), sigma^2)): half the draws lie below `median`."""

    median: float
    sigma: float

    def __post_init__(self) -> None:
        if not 0 < self.median < math.inf or not 0 <= self.sigma < math.inf:
            raise ValueError(
                f"lognormal needs 0 < median < inf and 0 <= sigma < inf, got median={self.median}, sigma={self.sigma}"
            )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.lognormal(math.log(self.median), self.sigma, n)

    @property
    def maximum(self) -> float:
        return math.inf if self.sigma > 0 else self.median


DISTRIBUTIONS: dict[str, type[Distribution]] = {"constant": Constant, "uniform": Uniform, "lognormal": LogNormal}


def parse_distribution(spec: str) -> Distribution:
    """A Distribution from `constant:value=V`, `uniform:low=A,high=B` or `lognormal:median=M,sigma=S`."""
    name, params = _split_spec(spec)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"{spec!r}: unknown distribution {name!r}; choose one of {sorted(DISTRIBUTIONS)}")
    kind = DISTRIBUTIONS[name]
    _expect(spec, params, [f.name for f in fields(kind)])
    return kind(**{key: _number(value, f"{spec!r}: {key}") for key, value in params.items()})


# ---- availability ------------------------------------------------------------------------------------------------


class Availability(ABC):
    """Whether a client is online when selected and when it finishes a task."""

    @abstractmethod
    def online_at_selection(self, client_id: int, time: float, u: float) -> bool:
        """Online when selected at `time`; `u` is a uniform draw in [0, 1) seeded by the caller."""

    @abstractmethod
    def online_at_finish(self, client_id: int, time: float) -> bool:
        """Online when finishing a task at `time`."""

    def next_online(self, client_id: int, time: float) -> float:
        """The earliest time >= `time` at which the client may be online (inf: never)."""
        return time

    def online_mask(self, clients: np.ndarray, time: float, u: np.ndarray) -> np.ndarray:
        """`online_at_selection` for many clients at once (`u`: one uniform draw each)."""
        return np.array([self.online_at_selection(int(c), time, float(x)) for c, x in zip(clients, u)], dtype=bool)


@dataclass(frozen=True)
class Always(Availability):
    """Every client is always online."""

    def online_at_selection(self, client_id: int, time: float, u: float) -> bool:
        return True

    def online_at_finish(self, client_id: int, time: float) -> bool:
        return True

    def online_mask(self, clients: np.ndarray, time: float, u: np.ndarray) -> np.ndarray:
        return np.ones(len(clients), dtype=bool)


@dataclass(frozen=True)
class Bernoulli(Availability):
    """Online at each selection with probability `p`; never lost before finishing."""

    p: float

    def __post_init__(self) -> None:
        if not 0 <= self.p <= 1:
            raise ValueError(f"bernoulli needs 0 <= p <= 1, got p={self.p}")

    def online_at_selection(self, client_id: int, time: float, u: float) -> bool:
        return u < self.p

    def online_at_finish(self, client_id: int, time: float) -> bool:
        return True

    def online_mask(self, clients: np.ndarray, time: float, u: np.ndarray) -> np.ndarray:
        return np.asarray(u) < self.p


@dataclass(frozen=True, eq=False)
class Trace(Availability):
    """Online during listed intervals of a repeating period; client i follows trace i % len(starts)."""

    period: float
    starts: tuple[np.ndarray, ...] = field(repr=False)
    ends: tuple[np.ndarray, ...] = field(repr=False)

    def online_at_selection(self, client_id: int, time: float, u: float) -> bool:
        return self.online_at_finish(client_id, time)

    def online_at_finish(self, client_id: int, time: float) -> bool:
        trace, t = client_id % len(self.starts), time % self.period
        return bool(np.any((self.starts[trace] <= t) & (t < self.ends[trace])))

    def next_online(self, client_id: int, time: float) -> float:
        trace, t = client_id % len(self.starts), time % self.period
        starts = self.starts[trace]
        if self.online_at_finish(client_id, time) or starts.size == 0:
            return time if starts.size else math.inf
        later = starts[starts > t]
        return time + (float(later.min()) - t if later.size else self.period - t + float(starts.min()))


def _read_csv(path: str, required: Sequence[str], optional: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file whose header has every `required` column and otherwise only `optional` ones."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file, skipinitialspace=True)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        rows = list(reader)
    missing = [name for name in required if name not in header]
    unknown = [name for name in header if name not in (*required, *optional)]
    if missing or unknown or len(set(header)) < len(header):
        raise ValueError(
            f"{path}: header {header} must have {list(required)} and may have {list(optional)}, each once"
        )
    if not rows:
        raise ValueError(f"{path}: no rows")
    if any(None in row or None in row.values() for row in rows):
        raise ValueError(f"{path}: every row must have exactly {len(header)} values")
    return rows


def _integer(text: str, what: str) -> int:
    """`text` as an integer >= 0."""
    if not text.strip().isdecimal():
        raise ValueError(f"{what} must be an integer >= 0, got {text!r}")
    return int(text)


def load_trace(path: str, period: float) -> Trace:
    """The trace availability in CSV file `path` (header `trace,start,end`, seconds within `period`)."""
    if not 0 < period < math.inf:
        raise ValueError(f"trace period must be > 0 and finite, got {period}")
    intervals: dict[int, list[tuple[float, float]]] = {}
    for row in _read_csv(path, ("trace", "start", "end"), ()):
        trace = _integer(row["trace"], f"{path}: trace id")
        start, end = (_number(row[key], f"{path}: trace {trace} {key}") for key in ("start", "end"))
        if not 0 <= start < end <= period:
            raise ValueError(f"{path}: trace {trace} needs 0 <= start < end <= period={period}, got [{start}, {end})")
        intervals.setdefault(trace, []).append((start, end))
    ids = sorted(intervals)
    starts = tuple(np.array([start for start, _ in intervals[trace]]) for trace in ids)
    ends = tuple(np.array([end for _, end in intervals[trace]]) for trace in ids)
    return Trace(period, starts, ends)


def parse_availability(spec: str) -> Availability:
    """An Availability from `always`, `bernoulli:p=P` or `trace:file=PATH,period=SECONDS`."""
    name, params = _split_spec(spec)
    if name == "always":
        _expect(spec, params, ())
        return Always()
    if name == "bernoulli":
        _expect(spec, params, ("p",))
        return Bernoulli(_number(params["p"], f"{spec!r}: p"))
    if name == "trace":
        _expect(spec, params, ("file", "period"))
        return load_trace(params["file"], _number(params["period"], f"{spec!r}: period"))
    raise ValueError(f"{spec!r}: unknown availability {name!r}; choose one of ['always', 'bernoulli', 'trace']")


# ---- profiles ----------------------------------------------------------------------------------------------------


def _check_field(name: str, values: np.ndarray, clients: Sequence[int], where: str = "") -> None:
    """Raise ValueError at the first value not allowed for field `name`."""
    allowed, text = _ALLOWED[name]
    bad = np.flatnonzero(~allowed(values))
    if bad.size:
        raise ValueError(f"{where}{name} of client {clients[bad[0]]} must be {text}, got {values[bad[0]]}")


@dataclass(frozen=True, eq=False)
class DeviceProfiles:
    """Per-client device and network numbers (read-only float64 arrays, one entry per client) and availability."""

    compute: np.ndarray
    bandwidth_up: np.ndarray
    bandwidth_down: np.ndarray
    latency: np.ndarray
    dropout: np.ndarray
    availability: Availability = field(default_factory=Always)

    def __post_init__(self) -> None:
        arrays = {name: np.array(getattr(self, name), dtype=np.float64) for name in FIELD_INDEX}
        shapes = {name: values.shape for name, values in arrays.items()}
        if len(set(shapes.values())) != 1 or len(shapes["compute"]) != 1:
            raise ValueError(f"profile fields must be 1-D arrays of one length, got shapes {shapes}")
        for name, values in arrays.items():
            _check_field(name, values, range(values.size))
            values.setflags(write=False)
            object.__setattr__(self, name, values)

    @property
    def num_clients(self) -> int:
        """How many clients have a profile."""
        return self.compute.size

    def task_seconds(self, client_id: int, samples: float, download_bytes: float, upload_bytes: float) -> float:
        """Seconds for a task: latency + download + `samples` training samples + upload."""
        if not 0 <= client_id < self.num_clients:
            raise ValueError(f"client_id must be in [0, {self.num_clients}), got {client_id}")
        if not min(samples, download_bytes, upload_bytes) >= 0:
            raise ValueError(f"samples and bytes must be >= 0, got {samples}, {download_bytes}, {upload_bytes}")
        return float(
            self.latency[client_id]
            + download_bytes / self.bandwidth_down[client_id]
            + samples * self.compute[client_id]
            + upload_bytes / self.bandwidth_up[client_id]
        )


def load_table(path: str) -> dict[str, np.ndarray]:
    """The columns of a device table as {field: values in ascending `client` order}."""
    rows = _read_csv(path, ("client",), tuple(FIELD_INDEX))
    by_client = {_integer(row["client"], f"{path}: client id"): row for row in rows}
    if len(by_client) < len(rows):
        raise ValueError(f"{path}: client ids must be unique")
    clients = sorted(by_client)
    table = {}
    for name in (key for key in FIELD_INDEX if key in rows[0]):
        values = np.array([_number(by_client[c][name], f"{path}: {name} of client {c}") for c in clients])
        _check_field(name, values, clients, f"{path}: ")
        table[name] = values
    return table


def _draw(name: str, spec: str, num_clients: int, seed: int) -> np.ndarray:
    """Field `name`'s values for `num_clients` clients from distribution `spec`, on the field's own generator."""
    distribution = parse_distribution(spec)
    if name == "dropout" and distribution.maximum > 1:
        raise ValueError(f"dropout is a probability, but {spec!r} can exceed 1")
    return distribution.sample(num_clients, np.random.default_rng([seed, FIELD_INDEX[name]]))


def sample_profiles(spec: Mapping[str, str], num_clients: int, seed: int) -> DeviceProfiles:
    """Profiles of `num_clients` clients from a `[devices]`-style mapping; see the module docstring for the keys."""
    unknown = sorted(set(spec) - {*DEFAULTS, "table"})
    if unknown:
        raise ValueError(f"unknown device keys {unknown}; allowed: {sorted({*DEFAULTS, 'table'})}")
    if num_clients < 1 or seed < 0:
        raise ValueError(f"need num_clients >= 1 and seed >= 0, got {num_clients} and {seed}")
    specs = {**DEFAULTS, **spec}
    table = load_table(specs["table"]) if "table" in specs else {}
    rows = np.arange(num_clients)
    values = {
        name: table[name][rows % table[name].size] if name in table else _draw(name, specs[name], num_clients, seed)
        for name in FIELD_INDEX
    }
    return DeviceProfiles(**values, availability=parse_availability(specs["availability"]))
