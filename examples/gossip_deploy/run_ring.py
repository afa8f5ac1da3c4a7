"""Eight `fl node` processes on a ring on 127.0.0.1 run synchronous D-PSGD, and end with the simulation's parameters.

The script finds free ports, starts node i with `--listen 127.0.0.1:PORT_i` and `--peers` naming its neighbours in
the configured topology (i - 1 and i + 1 on the ring), waits for every node, averages their final parameters as a
simulation's model.pt does (the float64 mean of the node models) and compares that with `run_simulation` of the same
configuration (engine "nodes"): with a lossless message codec the two are equal bit for bit. `--secure` makes an
operator's CA and one certificate per node (CN=node-I, for 127.0.0.1), with the openssl command, and runs every node
with mutual TLS: each node proves its id with its own certificate. Node logs and final parameters go to
OUT/gossip_deploy/ (node-I.log, node-I.pt).

Run:  python examples/gossip_deploy/run_ring.py [--rounds N] [--out DIR] [--secure] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from fl.config import RunConfig, load_config
from fl.gossip_sim import gossip_setup
from fl.node import neighbours
from fl.scenario import build_data, build_model_fn
from fl.simulation import run_simulation

HERE = Path(__file__).resolve().parent


def free_ports(count: int) -> list[int]:
    """Ports the OS has free on 127.0.0.1 now (held open together, so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_certificates(folder: Path, nodes: range, host: str = "127.0.0.1") -> tuple[str, dict[int, tuple[str, str]]]:
    """An operator's CA and, for each node I, a key and a certificate that the CA signed, naming node-I (its common
    name and a DNS name) and `host` (the address its peers dial): (CA path, {node: (cert path, key path)})."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    openssl("req", "-x509", *NEW_KEY, "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj",
            "/CN=gossip operator CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    certificates = {}
    for node in nodes:
        cert, key, request, extensions = (folder / f"node-{node}.{kind}" for kind in ("pem", "key", "csr", "ext"))
        extensions.write_text(f"subjectAltName=DNS:node-{node},IP:{host}\n")
        openssl("req", *NEW_KEY, "-keyout", str(key), "-out", str(request), "-subj", f"/CN=node-{node}")
        openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-out", str(cert), "-days", "1", "-extfile", str(extensions))
        certificates[node] = (str(cert), str(key))
    return str(ca), certificates


def credentials(folder: Path, count: int) -> list[list[str]]:
    """Each node's `fl node` options for mutual TLS with its own certificate."""
    ca, certificates = make_certificates(folder / "tls", range(count))
    return [["--tls-cert", cert, "--tls-key", key, "--root-cert", ca] for cert, key in certificates.values()]


def start_nodes(config_path: str, config: RunConfig, overrides: list[str], folder: Path,
                extra: list[list[str]] | None) -> list[tuple[subprocess.Popen, Path]]:
    """One `fl node` process per node of the configured topology (node I with options `extra[I]`), each logging to
    folder/node-I.log."""
    data = build_data(config.data, config.seed)
    topology = gossip_setup(config, data, build_model_fn(config.model, data)).topology
    addresses = [f"127.0.0.1:{port}" for port in free_ports(data.num_clients)]
    nodes = []
    for node, address in enumerate(addresses):
        ins, outs = neighbours(topology, node)
        peers = ",".join(f"{peer}={addresses[peer]}" for peer in sorted(ins | outs))
        command = [sys.executable, "-m", "fl.cli", "node", "--config", config_path, "--node-id", str(node),
                   "--listen", address, "--peers", peers, *(extra[node] if extra else [])]
        for override in overrides:
            command += ["--set", override]
        log = folder / f"node-{node}.log"
        with log.open("w") as stream:
            nodes.append((subprocess.Popen(command, stderr=stream, stdout=stream), log))
    return nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(HERE / "ring.toml"))
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: the config's)")
    parser.add_argument("--out", default="runs", help="output directory (default %(default)s)")
    parser.add_argument("--secure", action="store_true",
                        help="mutual TLS, a certificate per node (needs the openssl command)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the nodes")
    args = parser.parse_args()
    overrides = [*args.overrides, f'output_dir="{args.out}"'] + ([f"rounds={args.rounds}"] if args.rounds else [])
    config = load_config(args.config, overrides)
    folder = Path(config.output_dir) / config.name
    folder.mkdir(parents=True, exist_ok=True)
    extra = credentials(folder, config.data.num_clients) if args.secure else None

    start = time.perf_counter()
    nodes = start_nodes(args.config, config, overrides, folder, extra)
    deadline = start + args.timeout
    codes = [process.wait(timeout=max(deadline - time.perf_counter(), 1)) for process, _ in nodes]
    print(f"{len(nodes)} nodes ran {config.rounds} rounds in {time.perf_counter() - start:.1f} s"
          + (" (mutual TLS, a certificate per node)" if args.secure else ""))
    if any(codes):
        for (_, log), code in zip(nodes, codes):
            if code:
                print(f"--- {log.name} (exit code {code})\n{log.read_text()[-2000:]}", file=sys.stderr)
        return 1
    for _, log in nodes:
        print(log.read_text().strip().splitlines()[-1])

    models = torch.stack([torch.load(folder / f"node-{node}.pt")["params"] for node in range(len(nodes))])
    average = models.to(torch.float64).mean(0).to(models.dtype)
    simulated = run_simulation(load_config(args.config, [*overrides, 'topology.engine="nodes"']), write=False,
                               show_progress=False)
    equal = torch.equal(average, simulated.global_params)
    gap = float((average.double() - simulated.global_params.double()).abs().max())
    print(f"simulation: test accuracy {simulated.history[-1]['test_accuracy']:.4f}")
    print(f"averaged node parameters equal the simulation's (torch.equal): {equal} (max |difference| {gap:.3g})")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
