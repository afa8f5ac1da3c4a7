"""`fl node` processes against what a peer can do to them: a ring of four completes its rounds while 64 idle Send
streams are held open on one node; with one certificate per node (mutual TLS) a node cannot send as another, a
certificate naming another node is refused at start, and an honest ring still ends with the simulation's bits."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
import torch

from fl.cli import main
from fl.config import load_config
from tests.examples.test_gossip_deploy import EXAMPLE, free_ports, node_models, simulated_nodes
from transport.auth import CLIENT_KEY
from transport.gossip_peer import STEP_KEY, TO_KEY, GossipClient, GossipServer, Inbox

RING = ["data.num_clients=4", "sampling.per_round=4", "rounds=2", "transport.timeout_seconds=60"]
SIZE = 10


def example_module():
    """examples/gossip_deploy/run_ring.py, whose `make_certificates` provisions nodes as its README says."""
    spec = importlib.util.spec_from_file_location("run_ring", EXAMPLE / "run_ring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> tuple[str, dict[int, tuple[str, str]]]:
    """An operator's CA and certificates for nodes 0-2 and 9, each naming node-I and 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    return example_module().make_certificates(tmp_path_factory.mktemp("tls"), [0, 1, 2, 9])


class Ring:
    """`fl node` processes of a ring on 127.0.0.1, each logging to its own file."""

    def __init__(self, folder: Path, overrides: list[str]) -> None:
        self.folder, self.overrides = folder, [*overrides, f'output_dir="{folder}"']
        self.count = load_config(EXAMPLE / "ring.toml", self.overrides).data.num_clients
        self.addresses = [f"127.0.0.1:{port}" for port in free_ports(self.count)]
        self.processes: dict[int, subprocess.Popen] = {}

    def start(self, node: int, extra: Sequence[str] = ()) -> None:
        left, right = (node - 1) % self.count, (node + 1) % self.count
        peers = ",".join(f"{peer}={self.addresses[peer]}" for peer in sorted({left, right}))
        command = [sys.executable, "-m", "fl.cli", "node", "--config", str(EXAMPLE / "ring.toml"), "--node-id",
                   str(node), "--listen", self.addresses[node], "--peers", peers, *extra]
        with self.log(node).open("w") as log:
            self.processes[node] = subprocess.Popen(command + [item for override in self.overrides
                                                               for item in ("--set", override)],
                                                    stdout=log, stderr=subprocess.STDOUT)

    def log(self, node: int) -> Path:
        return self.folder / f"node-{node}.log"

    def wait_listening(self, node: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log(node).read_text():
            assert time.monotonic() < deadline and self.processes[node].poll() is None, self.log(node).read_text()
            time.sleep(0.1)

    def finish(self, timeout: float = 120) -> list[int]:
        deadline = time.monotonic() + timeout
        return [self.processes[node].wait(timeout=max(deadline - time.monotonic(), 1)) for node in range(self.count)]

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def logs(self) -> str:
        return "\n".join(self.log(node).read_text()[-1500:] for node in range(self.count))


def idle_stream(release: threading.Event):
    release.wait(120)
    yield from ()


def test_a_ring_of_four_completes_while_64_idle_streams_are_held_on_one_node(tmp_path) -> None:
    # Prepare: node 0 up, then 64 Send streams to it in its in-neighbour's name that never send a frame
    ring = Ring(tmp_path, RING)
    channel, release = None, threading.Event()
    try:
        ring.start(0)
        ring.wait_listening(0)
        channel = grpc.insecure_channel(ring.addresses[0])
        send = channel.stream_unary("/fl.Gossip/Send")
        metadata = ((CLIENT_KEY, "1"), (TO_KEY, "0"), (STEP_KEY, "0"))
        idle = [send.future(idle_stream(release), metadata=metadata) for _ in range(64)]
        time.sleep(0.5)
        assert not any(call.done() for call in idle)
        # Execute: the other three nodes join
        for node in (1, 2, 3):
            ring.start(node)
        codes = ring.finish()
        # Assert: every node ran both rounds, with the simulation's bits
        assert codes == [0] * 4, ring.logs()
        expected = simulated_nodes(load_config(EXAMPLE / "ring.toml", ring.overrides))
        for node, params in enumerate(node_models(tmp_path / "gossip_deploy", 4)):
            assert torch.equal(params, expected[node]), f"node {node}"
    finally:
        release.set()
        ring.kill()
        if channel is not None:
            channel.close()


def test_a_ring_with_a_certificate_per_node_equals_the_simulation(tmp_path, certificates) -> None:
    ca, certs = certificates
    ring = Ring(tmp_path, [*RING, "data.num_clients=3", "sampling.per_round=3"])
    try:
        for node in range(3):
            ring.start(node, ["--tls-cert", certs[node][0], "--tls-key", certs[node][1], "--root-cert", ca])
        codes = ring.finish()
    finally:
        ring.kill()
    assert codes == [0] * 3, ring.logs()
    expected = simulated_nodes(load_config(EXAMPLE / "ring.toml", ring.overrides))
    for node, params in enumerate(node_models(tmp_path / "gossip_deploy", 3)):
        assert torch.equal(params, expected[node]), f"node {node}"


def test_a_node_cannot_send_as_another_with_its_certificate(certificates) -> None:
    # Prepare: node 0 (in-neighbours 1 and 3) requires certificates of the operator's CA
    ca, certs = certificates
    inbox = Inbox(0, lambda round, step: [1, 3], SIZE, torch.float32)
    server = GossipServer(inbox, "127.0.0.1:0", tls=certs[0], client_ca=ca)
    address = f"127.0.0.1:{server.port}"
    one = GossipClient(address, root_cert_path=ca, identity=certs[1], timeout_seconds=5)
    outsider = GossipClient(address, root_cert_path=ca, identity=certs[9], timeout_seconds=5)
    anonymous = GossipClient(address, root_cert_path=ca, timeout_seconds=1)
    try:
        # Execute, Assert: node 1 sends as itself; as node 3, or as node 9 for node 1, it is refused
        one.send(1, 0, 1, 0, torch.ones(SIZE))
        with pytest.raises(grpc.RpcError) as forged:
            one.send(3, 0, 1, 0, torch.ones(SIZE))
        with pytest.raises(grpc.RpcError) as stolen:
            outsider.send(1, 0, 2, 0, torch.ones(SIZE))
        with pytest.raises((grpc.RpcError, TimeoutError)):  # no certificate: the handshake fails
            anonymous.send(3, 0, 1, 0, torch.ones(SIZE))
        assert forged.value.code() == stolen.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "certificate is node 1's: it cannot send as node 3" in forged.value.details()
        assert set(inbox._messages) == {(1, 0, 1)}
    finally:
        for client in (one, outsider, anonymous):
            client.close()
        server.stop(None)


@pytest.mark.parametrize("cert_node, root, expected", [
    (1, True, "names node(s) [1], not node 0 (--node-id)"),
    (0, False, "node 0's own certificate needs the CA"),
], ids=["another-nodes-certificate", "no-ca"])
def test_fl_node_refuses_a_certificate_that_is_not_its_own_at_start(certificates, capsys, cert_node, root,
                                                                    expected) -> None:
    ca, certs = certificates
    cert, key = certs[cert_node]

    code = main(["node", "--config", str(EXAMPLE / "ring.toml"), "--node-id", "0", "--listen", "127.0.0.1:0",
                 "--peers", "1=127.0.0.1:1,7=127.0.0.1:7", "--tls-cert", cert, "--tls-key", key,
                 *(["--root-cert", ca] if root else [])])

    error = capsys.readouterr().err
    assert code == 2
    assert expected in error and len(error.strip().splitlines()) == 1
