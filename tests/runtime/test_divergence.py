"""A run whose clients' training diverges ends with one line naming the round and the clients, with a learning-rate
hint, and exit code 2, on every synchronous and asynchronous path."""

from __future__ import annotations

import pytest

from fl.cli import main
from fl.errors import Diverged
from fl.simulation import run_simulation
from tests.conftest import small_config

PATHS = {
    "sync local grpc": ('strategy.name="fedavg"', 'transport.channel="grpc"'),
    "sync local direct": ('strategy.name="fedavg"', 'transport.channel="direct"'),
    "async local grpc": ('strategy.name="fedbuff"', "strategy.buffer_size=2", "strategy.concurrency=4"),
    "async local direct": ('strategy.name="fedasync"', 'transport.channel="direct"', "strategy.concurrency=4"),
}


@pytest.mark.parametrize("path", PATHS)
def test_a_diverging_run_names_the_round_and_the_clients(tmp_path, path):
    config = small_config(tmp_path, "client.lr=1e4", *PATHS[path])

    with pytest.raises(Diverged) as stopped:
        run_simulation(config, write=False, show_progress=False)

    message = str(stopped.value)
    assert message.startswith("round 1: the training of ") and "diverged from the initial model" in message
    assert "try a smaller client.lr" in message and "\n" not in message


def test_a_diverging_run_on_ray_ends_with_the_same_line(tmp_path, ray_session):
    config = small_config(tmp_path, "client.lr=1e4", 'runtime.backend="ray"', "runtime.num_workers=2")

    with pytest.raises(Diverged, match=r"^round 1: the training of 4 of 4 clients \(\d+, \d+, \d+, \d+\) diverged"):
        run_simulation(config, write=False, show_progress=False)


def test_fl_run_exits_2_with_one_line_when_the_training_diverges(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'output_dir = "{tmp_path}"\nrounds = 2\n[data]\nnum_clients = 8\n[sampling]\nper_round = 4\n'
                      f'[model]\nhidden = [16]\n[runtime]\nbackend = "local"\n[client]\nlr = 1e4\n')

    assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("fl: error: round 1: the training of 4 of 4 clients")
    assert "Traceback" not in err
