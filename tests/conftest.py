"""One Ray session for the whole test run, and a small fast configuration to build tests on."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fl.config import RunConfig, load_config


@pytest.fixture(scope="session")
def ray_session():
    """Local Ray with 2 CPUs on 127.0.0.1, started once; runs that find Ray running reuse it and leave it up."""
    from fl.ray_runtime import init_ray  # first: it keeps Ray on the loopback interface before Ray is imported

    import ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def small_config(tmp_path, *overrides: str) -> RunConfig:
    """Synthetic(1,1) with 12 clients, 4 per round, 3 rounds, a small MLP; in-process unless overridden."""
    base = [
        'name="test"', "rounds=3", f'output_dir="{tmp_path}"', "data.num_clients=12", "sampling.per_round=4",
        "model.hidden=[32]", 'runtime.backend="local"', "client.batch_size=16",
    ]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by the openssl CLI: (cert_path, key_path)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def fed():
    """A board with version 1 published, its gRPC server on 127.0.0.1, and a client of it."""
    import torch

    from tests.grpc_helpers import CHUNK, SIZE, Federation, PayloadAdmission, raw
    from transport.grpc_client import FederationClient
    from transport.board import TaskBoard
    from transport.grpc_server import serve

    board = TaskBoard(PayloadAdmission(), chunk_size=CHUNK)
    board.publish(1, raw(torch.arange(SIZE, dtype=torch.float32)))
    server, port = serve(board)
    client = FederationClient(f"127.0.0.1:{port}", chunk_size=CHUNK, timeout_seconds=10)
    yield Federation(board, client, f"127.0.0.1:{port}")
    client.close()
    server.stop(None)
