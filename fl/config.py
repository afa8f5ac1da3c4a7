"""Run configuration: one dataclass per section, loaded from TOML, overridden with `--set key=value`, validated.

Every problem is a ConfigError whose message is one line naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fl.models import MODELS
from fl.seeding import DEVICES as DEVICES_STREAM
from fl.seeding import derive_seed
from fl.training import OPTIMIZERS, UPDATE_DTYPES, TrainConfig
from fl.worker import DEVICES
from simulations.datasets import DIGITS_CLASSES, DIGITS_SAMPLES
from simulations.partitions import PARTITIONERS
from simulations.profiles import Bernoulli, DeviceProfiles, sample_profiles
from simulations.topologies import parse_topology
from strategies.registry import STRATEGIES, kind, strategy_config
from transport.codecs.registry import make_codec

DATASETS = ("synthetic", "digits")
AVAILABILITY = ("always", "uniform")
GOSSIP_ENGINES = ("auto", "vectorized", "nodes")
BACKENDS = ("ray", "local", "deploy")  # deploy: clients are separate processes (`fl server` / `fl client`)
CHANNELS = ("grpc", "direct")
MAX_SEED = 2**63 - 1  # a TOML integer, and a seed torch and numpy take
MIN_VIRTUAL_SECONDS = 1e-6  # max_virtual_seconds: 0 (no limit) or at least a microsecond of virtual time
TIMEOUT_RANGE = (1.0, 7 * 24 * 3600.0)  # transport.timeout_seconds: from a second to a week


class ConfigError(ValueError):
    """A bad configuration value or key; the message is one line."""


@dataclass
class DataConfig:
    name: str = "synthetic"  # synthetic | digits
    num_clients: int = 100
    alpha: float = 1.0  # Synthetic(alpha, beta): how much client models differ
    beta: float = 1.0  # Synthetic(alpha, beta): how much client inputs differ
    partition: str = "dirichlet"  # digits: iid | dirichlet | shards | quantity_skew
    dirichlet_alpha: float = 0.5
    classes_per_client: int = 2
    test_fraction: float = 0.1


@dataclass
class ModelConfig:
    name: str = "mlp"  # mlp | logreg | cnn
    hidden: list[int] = field(default_factory=lambda: [200, 200])  # mlp only


@dataclass
class SamplingConfig:
    per_round: int = 10
    availability: str = "always"  # always | uniform (each client reachable with a fixed probability in [low, high])
    availability_low: float = 0.2
    availability_high: float = 1.0
    deadline: float = 0.0  # virtual seconds a round waits for its clients; later ones are late (0: no deadline)
    over_select: float = 1.0  # select ceil(per_round * over_select) clients, keep the first per_round to arrive


@dataclass
class DevicesConfig:
    """Per-client device and network profiles (simulations/profiles.py); all empty: every client is instantaneous
    and always available. Distributions: "constant:value=V", "uniform:low=A,high=B", "lognormal:median=M,sigma=S"."""

    compute: str = ""  # seconds per training sample
    bandwidth_up: str = ""  # bytes per second
    bandwidth_down: str = ""  # bytes per second
    latency: str = ""  # seconds per task
    availability: str = ""  # always | bernoulli:p=P | trace:file=PATH,period=SECONDS
    dropout: str = ""  # probability that a task fails midway and its result never arrives
    table: str = ""  # a CSV of per-client columns that replace the distributions (client i takes row i % rows)

    def spec(self) -> dict[str, str]:
        """The keys that are set: empty when no profile is configured."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value}


@dataclass
class StrategySection:
    name: str = "fedavg"
    options: dict[str, Any] = field(default_factory=dict)  # the strategy's own settings, e.g. server_lr


@dataclass
class TopologySection:
    """The graph of a decentralized (gossip) run and its mixing weights (simulations/topologies.py)."""

    name: str = "ring"  # ring | torus | complete | star | regular | erdos_renyi | exponential | one_peer_exponential |
    #                     directed_exponential | edge_list
    weights: str = ""  # metropolis | uniform; empty: metropolis, or uniform for the exponential graphs (fixed weights)
    engine: str = "auto"  # auto | vectorized (every node in one batched step) | nodes (one node at a time, on hosts
    # that send each other the messages over gRPC when the channel is gRPC); auto: nodes on hosts below 100 nodes
    independent_init: bool = False  # every node draws its own initial model
    options: dict[str, Any] = field(default_factory=dict)  # the graph's own settings, e.g. degree, p, rows, file


@dataclass
class EvalConfig:
    every: int = 1  # central test set every N rounds; 0: after the last round only
    federated_every: int = 0  # clients evaluate on their own test splits every N rounds; 0: never
    federated_clients: int = 10


@dataclass
class RuntimeConfig:
    backend: str = "ray"  # ray | local (in-process, no Ray) | deploy (clients are `fl client` processes)
    address: str = ""  # Ray cluster address; empty: start Ray locally
    num_workers: int = 0  # 0: one per CPU (or per GPU when GPUs are present)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractional GPUs allowed, e.g. 0.25 puts four workers on one GPU
    device: str = "auto"  # auto | cpu | cuda
    threads_per_worker: int = 1


@dataclass
class TransportConfig:
    channel: str = "grpc"  # grpc | direct (Python objects in-process, or Ray objects on the ray backend)
    uplink: str = "identity"  # codec for client updates, e.g. "fp16", "topk:ratio=0.01+int8", "ef21(topk:ratio=0.01)"
    downlink: str = "identity"  # codec for the broadcast: a lossy one sends the change since the last, with EF
    listen: str = "127.0.0.1:0"  # where the server's gRPC service listens; port 0: the OS picks
    chunk_bytes: int = 1 << 20  # large messages travel in chunks of this size
    max_message_bytes: int = 0  # gRPC's per-message limit; 0: one chunk plus header room
    timeout_seconds: float = 120.0
    tls_cert: str = ""  # server certificate and key (PEM) for TLS; both or neither
    tls_key: str = ""
    tls_root_cert: str = ""  # what clients trust, for TLS
    auth_secret_file: str = ""  # a file holding the secret that per-client tokens derive from; empty: no tokens
    idle_seconds: float = 30.0  # the server cancels a call whose stream moves no frame for this long
    calls_per_client: int = 4  # calls one client id may have in progress at once on the server


@dataclass
class SecurityConfig:
    """What the server (and every gossip node) refuses whatever it came from: see docs/security.md."""

    # An update (or a gossip message) whose L2 norm exceeds this many times max(1, the L2 norm of the model it
    # applies to) is refused; 0 turns the bound off.
    max_update_norm: float = 10.0


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 0
    rounds: int = 20  # synchronous rounds, or versions an asynchronous strategy publishes
    max_virtual_seconds: float = 0.0  # also stop once the virtual clock reaches this (0: no limit)
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    strategy: StrategySection = field(default_factory=StrategySection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    devices: DevicesConfig = field(default_factory=DevicesConfig)
    topology: TopologySection = field(default_factory=TopologySection)
    security: SecurityConfig = field(default_factory=SecurityConfig)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and type(value) is not kind:
        raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    if getattr(kind, "__origin__", None) is list:
        item = kind.__args__[0]
        if not isinstance(value, list) or any(type(v) is not item for v in value):
            raise ConfigError(f"{key} must be a list of {item.__name__}, got {value!r}")
    return value


def from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from nested dicts, refusing unknown keys and wrong types."""
    hints = get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if cls is StrategySection and key != "name" or cls is TopologySection and key not in allowed:
            kwargs.setdefault("options", {})[key] = value
            continue
        if key not in allowed:
            raise ConfigError(f"unknown key {path!r}; allowed: {', '.join(prefix + a for a in allowed)}")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a table of settings")
            kwargs[key] = from_dict(kind, value, f"{path}.")
        else:
            kwargs[key] = _coerce(value, kind, path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dicts, with strategy options flattened into the strategy table (as written in TOML)."""
    out = dataclasses.asdict(config)
    strategy = out["strategy"]
    out["strategy"] = {"name": strategy["name"], **strategy["options"]}
    topology = out["topology"]
    out["topology"] = {key: value for key, value in topology.items() if key != "options"} | topology["options"]
    return out


def parse_value(text: str) -> Any:
    """A TOML value (number, bool, quoted string, list); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides to nested dicts (a copy)."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.strip().split(".")
        table = values
        for parent in parents:
            table = table.setdefault(parent, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{key!r}: {parent!r} is a value, not a table")
        table[leaf] = parse_value(text.strip())
    return values


def load_config_text(text: str, overrides: list[str] | None = None, source: str = "config text") -> RunConfig:
    """A config from TOML text (a file's, or what a server sends to joining clients), validated."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: {error}") from None
    config = from_dict(RunConfig, apply_overrides(values, overrides or []))
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read TOML (or start from defaults), apply overrides, and validate."""
    text = "" if path is None else read_config_file(path)
    return load_config_text(text, overrides, source=str(path))


def read_config_file(path: str | Path) -> str:
    """The text of a TOML file; ConfigError when it is missing, not a file, unreadable or not UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (a TOML file is)") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}") from None


def read_secret(path: str) -> bytes:
    """The secret (of a server's tokens, or of the nodes') in the file `path`, whitespace around it dropped;
    ConfigError for a missing, unreadable or empty file or a directory."""
    try:
        secret = Path(path).read_bytes().strip()
    except IsADirectoryError:
        raise ConfigError(f"the secret file {path} is a directory; give the file that holds the secret") from None
    except OSError as error:
        raise ConfigError(f"cannot read the secret file {path}: {error.strerror or error}") from None
    if not secret:
        raise ConfigError(f"the secret file {path} is empty: tokens under an empty secret prove nothing")
    return secret


def _one_of(key: str, value: str, allowed: Any) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not one of: {', '.join(allowed)}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: RunConfig) -> None:
    """Raise ConfigError on the first bad value."""
    client, sampling, runtime = config.client, config.sampling, config.runtime
    _require(config.rounds >= 1, f"rounds must be >= 1, got {config.rounds}")
    _require(0 <= config.seed <= MAX_SEED, f"seed must be in [0, 2**63 - 1], got {config.seed}")
    limit = config.max_virtual_seconds
    _require(limit == 0 or MIN_VIRTUAL_SECONDS <= limit < math.inf, f"max_virtual_seconds must be 0 (no limit) or "
             f"a finite number of virtual seconds >= {MIN_VIRTUAL_SECONDS:g}, got {limit}")
    validate_data(config.data)
    _one_of("model.name", config.model.name, MODELS)
    _require(all(h >= 1 for h in config.model.hidden), f"model.hidden must be positive sizes, got {config.model.hidden}")
    _one_of("client.optimizer", client.optimizer, OPTIMIZERS)
    _one_of("client.update_dtype", client.update_dtype, UPDATE_DTYPES)
    _require(client.lr > 0, f"client.lr must be > 0, got {client.lr}")
    _require(client.batch_size >= 1, f"client.batch_size must be >= 1, got {client.batch_size}")
    _require(client.steps >= 0, f"client.steps must be >= 0, got {client.steps}")
    _require(client.steps > 0 or client.epochs >= 1, f"client.epochs must be >= 1, got {client.epochs}")
    _require(0 <= client.momentum < 1, f"client.momentum must be in [0, 1), got {client.momentum}")
    _require(client.weight_decay >= 0, f"client.weight_decay must be >= 0, got {client.weight_decay}")
    _require(1 <= sampling.per_round <= config.data.num_clients, f"sampling.per_round must be in [1, data.num_clients="
             f"{config.data.num_clients}], got {sampling.per_round}")
    _one_of("sampling.availability", sampling.availability, AVAILABILITY)
    _require(sampling.deadline >= 0, f"sampling.deadline must be >= 0 virtual seconds, got {sampling.deadline}")
    _require(sampling.over_select >= 1, f"sampling.over_select must be >= 1, got {sampling.over_select}")
    _require(sampling.over_select == 1 or config.devices.spec(),
             "sampling.over_select needs a [devices] table: without one every client arrives at once, and keeping "
             "the first per_round would always keep the lowest client ids")
    device_profiles(config)
    _require(0 < sampling.availability_low <= sampling.availability_high <= 1,
             "sampling.availability_low and availability_high must satisfy 0 < low <= high <= 1")
    _require(config.eval.every >= 0 and config.eval.federated_every >= 0, "eval.every and eval.federated_every must be >= 0")
    _require(config.eval.federated_clients >= 1, "eval.federated_clients must be >= 1")
    _one_of("runtime.backend", runtime.backend, BACKENDS)
    _one_of("runtime.device", runtime.device, DEVICES)
    _require(runtime.num_workers >= 0, f"runtime.num_workers must be >= 0, got {runtime.num_workers}")
    _require(runtime.cpus_per_worker > 0 and runtime.gpus_per_worker >= 0,
             "runtime.cpus_per_worker must be > 0 and runtime.gpus_per_worker >= 0")
    _require(runtime.threads_per_worker >= 1, "runtime.threads_per_worker must be >= 1")
    _require(runtime.backend != "deploy" or config.transport.channel == "grpc",
             "runtime.backend = 'deploy' needs transport.channel = 'grpc'")
    validate_strategy(config)
    validate_transport(config.transport)
    bound = config.security.max_update_norm
    _require(bound == 0 or 0 < bound < float("inf"),
             f"security.max_update_norm must be 0 (no bound) or a positive number, got {bound}")


def validate_data(data: DataConfig) -> None:
    """The `[data]` table: a data set, a partitioner, and as many clients as the data set can give a sample each."""
    _one_of("data.name", data.name, DATASETS)
    _one_of("data.partition", data.partition, PARTITIONERS)
    _require(data.num_clients >= 1, f"data.num_clients must be >= 1, got {data.num_clients}")
    _require(data.alpha >= 0 and data.beta >= 0, "data.alpha and data.beta must be >= 0")
    _require(data.dirichlet_alpha > 0, f"data.dirichlet_alpha must be > 0, got {data.dirichlet_alpha}")
    _require(0 <= data.test_fraction < 1, f"data.test_fraction must be in [0, 1), got {data.test_fraction}")
    if data.name != "digits":
        return
    _require(data.num_clients <= DIGITS_SAMPLES, f"data.num_clients must be in [1, {DIGITS_SAMPLES}] for the digits "
             f"data set (one of its {DIGITS_SAMPLES} samples each at least), got {data.num_clients}")
    if data.partition == "shards":
        shards = data.num_clients * data.classes_per_client
        _require(data.classes_per_client >= 1 and DIGITS_CLASSES <= shards <= DIGITS_SAMPLES,
                 f"data.num_clients * data.classes_per_client must be in [{DIGITS_CLASSES}, {DIGITS_SAMPLES}] for "
                 f"the digits shards (one class and one sample per shard at least), got {shards}")


def device_profiles(config: RunConfig) -> DeviceProfiles | None:
    """The clients' profiles that the run draws from the `[devices]` table (None without one)."""
    spec = config.devices.spec()
    if not spec:
        return None
    try:
        return sample_profiles(spec, config.data.num_clients, derive_seed(config.seed, DEVICES_STREAM))
    except (ValueError, OSError) as error:
        raise ConfigError(f"devices: {error}") from None


def validate_strategy(config: RunConfig) -> None:
    """The strategy's options (each config checks its own), its codec, and the sections its kind needs."""
    name = config.strategy.name
    try:
        options = strategy_config(name, config.strategy.options)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    compression = getattr(options, "compression", "")
    if compression:
        try:
            make_codec(compression)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"strategy.compression: {error}") from None
    if kind(name) == "decentralized":
        validate_topology(config)
    if kind(name) == "asynchronous":
        _require(config.sampling.deadline == 0 and config.sampling.over_select == 1,
                 f"sampling.deadline and sampling.over_select shape synchronous rounds; the asynchronous strategy "
                 f"{name!r} starts clients itself (see its concurrency option)")


def validate_delivery(config: RunConfig) -> None:
    """Refuse a simulation whose `[devices]` table lets no task ever deliver an update: every client's tasks fail
    (dropout 1), or no client is ever online (bernoulli p = 0). Synchronous gossip and deployments use no profiles."""
    strategy = STRATEGIES[config.strategy.name]
    honoured = kind(config.strategy.name) != "decentralized" or getattr(strategy, "asynchronous", False)
    profiles = device_profiles(config) if honoured and config.runtime.backend != "deploy" else None
    if profiles is None:
        return
    _require(bool((profiles.dropout < 1).any()), f"devices.dropout = {config.devices.dropout!r} makes every task of "
             f"every client fail: no round can deliver an update (allowed: a dropout below 1 for some client)")
    availability = profiles.availability
    _require(not (isinstance(availability, Bernoulli) and availability.p == 0),
             f"devices.availability = {config.devices.availability!r} keeps every client offline: no round can "
             f"deliver an update (allowed: p > 0)")


def validate_topology(config: RunConfig) -> None:
    """The `[topology]` of a decentralized run: a graph that builds, an engine, a backend that runs it."""
    section = config.topology
    _one_of("topology.engine", section.engine, GOSSIP_ENGINES)
    _require(config.runtime.backend != "deploy", "a decentralized strategy runs as a simulation (backend ray or local)")
    try:
        parse_topology(section.name, config.data.num_clients, section.options, section.weights, config.seed)
    except (ValueError, OSError) as error:
        raise ConfigError(f"topology: {error}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    """`transport.listen` as (host, port); ConfigError unless it is HOST:PORT with a port in [0, 65535]."""
    host, _, port = listen.rpartition(":")
    _require(bool(host) and port.isdecimal() and int(port) <= 65535, f"transport.listen must be HOST:PORT with "
             f"PORT in [0, 65535] (0: the OS picks), got {listen!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def validate_transport(transport: TransportConfig) -> None:
    _one_of("transport.channel", transport.channel, CHANNELS)
    for key in ("uplink", "downlink"):
        try:
            make_codec(getattr(transport, key))
        except (ValueError, TypeError) as error:
            raise ConfigError(f"transport.{key}: {error}") from None
    parse_listen(transport.listen)
    _require(transport.chunk_bytes >= 1024, f"transport.chunk_bytes must be >= 1024, got {transport.chunk_bytes}")
    _require(transport.max_message_bytes == 0 or transport.max_message_bytes > transport.chunk_bytes,
             "transport.max_message_bytes must be 0 or larger than transport.chunk_bytes")
    low, high = TIMEOUT_RANGE
    _require(low <= transport.timeout_seconds <= high, f"transport.timeout_seconds must be in [{low:g}, {high:g}] "
             f"seconds, got {transport.timeout_seconds}")
    _require(0 < transport.idle_seconds < math.inf,
             f"transport.idle_seconds must be a finite number > 0, got {transport.idle_seconds}")
    _require(transport.calls_per_client >= 2, f"transport.calls_per_client must be >= 2 (a client's long poll and "
                                               f"one more call), got {transport.calls_per_client}")
    _require(bool(transport.tls_cert) == bool(transport.tls_key), "transport.tls_cert and transport.tls_key go together")
    for key in ("tls_cert", "tls_key", "tls_root_cert", "auth_secret_file"):
        path = getattr(transport, key)
        _require(not path or Path(path).is_file(), f"transport.{key}: no file at {path!r}")
