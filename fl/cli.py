"""The `fl` command: run a simulation, serve or join a deployment, run a gossip node, list strategies, plot runs."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import grpc

from fl.config import ConfigError, load_config, read_secret, validate_delivery
from fl.errors import ClientsGone, Diverged
from transport.channel import UpdateRefused
from transport.grpc_common import ListenError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM
HINTS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: " (no server answered in time: is it running there, and do its TLS settings "
                                       "match?)",
    grpc.StatusCode.ALREADY_EXISTS: " (`fl client --replace` takes over the client id)",
    grpc.StatusCode.UNAVAILABLE: " (the server is not running at that address, or it stopped)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl", description="Federated learning simulator")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a simulation from a TOML config")
    run.add_argument("config", help="TOML file, e.g. examples/quickstart.toml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set strategy.name=fedadam --set rounds=50")
    run.add_argument("--address", help="join the Ray cluster at this address instead of starting Ray locally")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    server = commands.add_parser("server", help="serve a run to `fl client` processes over gRPC (no Ray)")
    server.add_argument("--config", required=True, help="TOML file; clients receive it when they join")
    server.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to listen on (default %(default)s)")
    server.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value")
    server.add_argument("--quiet", action="store_true", help="no progress display")
    client = commands.add_parser("client", help="train one client for an `fl server`")
    client.add_argument("--server", required=True, help="HOST:PORT of the server")
    client.add_argument("--client-id", type=int, required=True, help="this client's id (0 .. num_clients-1)")
    client.add_argument("--token", help="this client's token (see `fl token`), when the server requires tokens")
    client.add_argument("--root-cert", help="PEM certificate to trust, when the server uses TLS")
    client.add_argument("--timeout", type=float, default=120.0, help="seconds each call may take (default %(default)s)")
    client.add_argument("--delay", type=float, default=0.0,
                        help="seconds to wait before each task, to emulate a slower device (default 0)")
    client.add_argument("--replace", action="store_true",
                        help="take over this client id from a live session (a process that still runs with it)")
    node = commands.add_parser("node", help="run one node of a decentralized run, gossiping with its peers over gRPC")
    node.add_argument("--config", required=True, help="TOML file of a decentralized run (every node reads the same)")
    node.add_argument("--node-id", type=int, required=True, help="this node's id (0 .. num_clients-1)")
    node.add_argument("--listen", required=True, help="HOST:PORT this node listens on for its in-neighbours")
    node.add_argument("--peers", default="", metavar="ID=HOST:PORT,...",
                      help="the addresses of the node's neighbours in the topology, e.g. "
                           "1=127.0.0.1:5001,7=127.0.0.1:5007")
    node.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config value")
    node.add_argument("--secret-file", help="the secret every node's token derives from (default: "
                                            "transport.auth_secret_file; none: no tokens)")
    node.add_argument("--tls-cert", help="PEM certificate to listen with (default: transport.tls_cert)")
    node.add_argument("--tls-key", help="PEM key of --tls-cert (default: transport.tls_key)")
    node.add_argument("--root-cert", help="PEM certificate to trust when dialling peers (default: "
                                          "transport.tls_root_cert)")
    token = commands.add_parser("token", help="print a client's token, derived from the server's secret")
    token.add_argument("--secret-file", required=True, help="the file named by transport.auth_secret_file")
    token.add_argument("--client-id", type=int, required=True)
    commands.add_parser("strategies", help="list the registered strategies")
    plot = commands.add_parser("plot", help="draw accuracy and loss of one or more runs per round, virtual time or bytes")
    plot.add_argument("runs", nargs="+", help="run directories, e.g. runs/quickstart")
    plot.add_argument("--out", default=None, help="PNG path (default: curves.png in the first run directory)")
    plot.add_argument("--x", choices=("round", "time", "bytes"), default="round",
                      help="the x axis: rounds, virtual seconds, or cumulative bytes moved (default %(default)s)")
    return parser


def _run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f'runtime.address="{args.address}"'] if args.address else [])
    config = load_config(args.config, overrides)
    validate_delivery(config)
    from fl.simulation import run_simulation

    return _delivered(run_simulation(config, show_progress=not args.quiet).history)


def _server(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ['runtime.backend="deploy"', 'transport.channel="grpc"',
                                        f'transport.listen="{args.listen}"']
    config = load_config(args.config, overrides)
    from fl.simulation import run_simulation

    return _delivered(run_simulation(config, show_progress=not args.quiet).history)


def _delivered(history: list[dict]) -> int:
    """0, or EXIT_FAILED with one line when no row of the run aggregated a single update."""
    if history and not any(row["clients"] for row in history):
        print(f"fl: error: none of the {len(history)} rounds received an update: every selected client was offline, "
              f"dropped out or late (see devices.availability, devices.dropout, sampling.availability and "
              f"sampling.deadline)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _client(args: argparse.Namespace) -> int:
    from fl.deploy import run_client
    from transport.grpc_client import FederationClient

    with FederationClient(args.server, client_id=args.client_id, token=args.token, root_cert_path=args.root_cert,
                          timeout_seconds=args.timeout) as connection:
        run_client(connection, args.client_id, replace=args.replace, delay=args.delay)
    return 0


def _node(args: argparse.Namespace) -> int:
    from fl.node import Security, parse_peers, run_node

    config = load_config(args.config, args.overrides)
    transport = config.transport
    cert, key = args.tls_cert or transport.tls_cert, args.tls_key or transport.tls_key
    if bool(cert) != bool(key):
        raise ConfigError("--tls-cert and --tls-key go together")
    secret_file = args.secret_file or transport.auth_secret_file
    secret = read_secret(secret_file) if secret_file else None
    security = Security(cert, key, args.root_cert or transport.tls_root_cert, secret)
    run_node(config, args.node_id, args.listen, parse_peers(args.peers), security)
    return 0


def _token(args: argparse.Namespace) -> int:
    from transport.auth import client_token

    if args.client_id < 0:
        raise ConfigError(f"--client-id must be >= 0, got {args.client_id} (no token acts for every client)")
    print(client_token(read_secret(args.secret_file), args.client_id))
    return 0


def _strategies(args: argparse.Namespace) -> int:
    from strategies.registry import STRATEGIES, describe, kind

    width = max(map(len, STRATEGIES))
    for name in STRATEGIES:
        print(f"{name:<{width}}  {kind(name):<12}  {describe(name)}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fl.plot import plot_runs

    out = args.out or Path(args.runs[0]) / "curves.png"
    print(plot_runs(args.runs, out, args.x))
    return 0


class Stopped(KeyboardInterrupt):
    """SIGTERM arrived: the command unwinds as on Ctrl-C (servers close, clients hear why) and exits 143. (A
    KeyboardInterrupt, since Ray's waits turn any other exception raised by a signal handler into a SystemError.)"""


_terminated: list[bool] = []  # set by SIGTERM: Ray's waits re-raise a handler's exception as a plain KeyboardInterrupt


def _stop(signum: int, frame: object) -> None:
    _terminated.append(True)
    raise Stopped()


def _exit_now(code: int) -> int:
    """Exit with `code` once the command has unwound, without the interpreter's teardown (where threads that gRPC
    and Ray still hold could abort the process)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"run": _run, "server": _server, "client": _client, "node": _node, "token": _token, "plot": _plot,
                "strategies": _strategies}
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (Stopped)
        print("fl: terminated (SIGTERM)" if _terminated else "fl: interrupted", file=sys.stderr)
        return _exit_now(EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED)
    except Diverged as error:  # a deployment's clients may not be honest: a failed run, not a bad input
        print(f"fl: error: {error}", file=sys.stderr)
        return EXIT_FAILED if args.command == "server" else EXIT_BAD_INPUT
    except ClientsGone as error:
        print(f"fl: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, FileNotFoundError, FloatingPointError, UpdateRefused, TimeoutError) as error:
        print(f"fl: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ListenError as error:
        print(f"fl: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except grpc.RpcError as error:
        hint = HINTS.get(error.code(), "")
        print(f"fl: error: {error.code().name}: {error.details()}{hint}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
