"""Values and files that cannot make a meaningful run are refused before anything starts: one `fl: error:` line
naming the key and what is allowed, exit code 2, no traceback, and no run directory (no data, Ray or server)."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch

from fl.cli import main
from simulations.datasets import DIGITS_CLASSES, DIGITS_SAMPLES, digits
from strategies.registry import STRATEGIES

QUICKSTART = "examples/quickstart.toml"
# A safety net: should a refusal stop working, the run it lets through is small and stays in this process.
SMALL = ("rounds=1", "data.num_clients=10", "sampling.per_round=2", "model.hidden=[8]", 'runtime.backend="local"')
SERVER_LR = sorted(name for name, cls in STRATEGIES.items() if "server_lr" in {f.name for f in dataclasses.fields(cls)})


def refused(capsys, tmp_path: Path, *overrides: str, config: str = QUICKSTART, command: tuple[str, ...] = ()) -> str:
    """Run `fl run` (or `command`) with the overrides; assert it was refused as the module docstring says; return
    the message."""
    output = tmp_path / "out"
    args = list(command or ("run", config, "--quiet")) + ["--set", f'output_dir="{output}"']
    for override in (*SMALL, *overrides):
        args += ["--set", override]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("fl: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not output.exists() or not any(output.iterdir())
    return err


@pytest.mark.parametrize(("key", "overrides"), [
    ("order", ('strategy.name="dpsgd"', 'strategy.order="bogus"')),
    ("gossip_steps", ('strategy.name="dfedsam_mgs"', "strategy.gossip_steps=0")),
    ("strategy.compression", ('strategy.name="choco"', 'strategy.compression="zstd"')),
    ("concurrency", ('strategy.name="fedbuff"', "strategy.concurrency=-1")),
    ("concurrency", ('strategy.name="fedfix"', "strategy.concurrency=-1")),
    ("merge", ('strategy.name="async_gossip"', "strategy.merge=0")),
    ("outer_lr", ('strategy.name="diloco"', "strategy.outer_lr=-1")),
    ("inner_weight_decay", ('strategy.name="diloco"', 'strategy.inner_weight_decay="x"')),
    ("eps", ('strategy.name="fedadam"', "strategy.eps=0")),
    ("momentum", ('strategy.name="fedavgm"', "strategy.momentum=1")),
    ("mu", ('strategy.name="fedprox"', "strategy.mu=-1")),
])
def test_strategy_options_are_refused_when_the_config_is_read(capsys, tmp_path, key, overrides):
    assert key in refused(capsys, tmp_path, *overrides)


@pytest.mark.parametrize("value", ["-1", "0", "inf", "nan"])
@pytest.mark.parametrize("name", SERVER_LR)
def test_every_server_lr_must_be_positive_and_finite(capsys, tmp_path, name, value):
    assert f"{name}: server_lr must be" in refused(capsys, tmp_path, f'strategy.name="{name}"',
                                                    f"strategy.server_lr={value}")


@pytest.mark.parametrize(("key", "overrides"), [
    ("seed", ("seed=18446744073709551616",)),
    ("seed", ("seed=9223372036854775808",)),
    ("max_virtual_seconds", ("max_virtual_seconds=1e-300",)),
    ("max_virtual_seconds", ("max_virtual_seconds=inf",)),
    ("model.hidden", ('model.hidden=["a"]',)),
    ("model.hidden", ("model.hidden=[true]",)),
    ("data.num_clients", ('data.name="digits"', "data.num_clients=10000", "sampling.per_round=10")),
    ("data.classes_per_client", ('data.name="digits"', 'data.partition="shards"', "data.classes_per_client=900")),
    ("transport.listen", ('transport.listen="bogus"',)),
    ("transport.listen", ('transport.listen="127.0.0.1:99999"',)),
    ("transport.listen", ('transport.listen="192.0.2.1:50051"',)),  # TEST-NET-1: an address of no machine here
    ("transport.timeout_seconds", ("transport.timeout_seconds=inf",)),
    ("transport.timeout_seconds", ("transport.timeout_seconds=1e-6",)),
    ("transport.idle_seconds", ("transport.idle_seconds=inf",)),
    ("devices.dropout", ('devices.dropout="constant:value=1.0"',)),
    ("devices.availability", ('devices.availability="bernoulli:p=0"',)),
    ("devices.dropout", ('strategy.name="fedasync"', 'devices.dropout="constant:value=1.0"')),
])
def test_values_that_cannot_make_a_run_are_refused(capsys, tmp_path, key, overrides):
    assert key in refused(capsys, tmp_path, *overrides)


@pytest.mark.parametrize("command", ["run", "server"])
def test_a_busy_port_is_refused_before_the_run_directory(capsys, tmp_path, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        if command == "run":
            message = refused(capsys, tmp_path, f'transport.listen="{address}"')
        else:
            message = refused(capsys, tmp_path, command=("server", "--config", QUICKSTART, "--listen", address))
    assert f"transport.listen = '{address}'" in message and "in use" in message


def test_a_node_refuses_an_unknown_compression(capsys, tmp_path):
    node = ("node", "--config", QUICKSTART, "--node-id", "0", "--listen", "127.0.0.1:0")
    message = refused(capsys, tmp_path, 'strategy.name="choco"', 'strategy.compression="zstd"', command=node)
    assert message.startswith("fl: error: strategy.compression: unknown codec 'zstd'; allowed: ")


@pytest.mark.parametrize("inside", [False, True])
def test_an_output_dir_that_names_a_file_is_refused(capsys, tmp_path, inside):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "runs" if inside else tmp_path / "file"
    assert "output_dir" in refused(capsys, tmp_path, f'output_dir="{output}"')


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys, tmp_path):
    assert "runtime.device = 'cuda'" in refused(capsys, tmp_path, 'runtime.device="cuda"')


@pytest.mark.parametrize(("content", "message"), [
    (b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary", "is not UTF-8 text"),
    (None, "is a directory"),
])
def test_a_config_that_is_not_a_toml_file_is_refused(capsys, tmp_path, content, message):
    path = tmp_path / "config.toml"
    path.mkdir() if content is None else path.write_bytes(content)
    assert message in refused(capsys, tmp_path, config=str(path))


def test_an_unreadable_config_is_refused(capsys, tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text('name = "x"\n')

    def denied(self: Path, *args, **kwargs) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # chmod 000 does not stop root
    assert "cannot be read: Permission denied" in refused(capsys, tmp_path, config=str(path))


def test_the_digits_constants_are_the_data_sets():
    x, y = digits()
    assert (len(y), len(set(y.tolist()))) == (DIGITS_SAMPLES, DIGITS_CLASSES)


def test_a_run_in_which_no_round_receives_an_update_exits_1_and_says_so(capsys, tmp_path):
    """Every client takes 1 virtual second and the rounds wait 0.5: each is late, in every round."""
    args = ["run", QUICKSTART, "--quiet", "--set", f'output_dir="{tmp_path}"']
    for override in (*SMALL, "rounds=2", 'devices.latency="constant:value=1"', "sampling.deadline=0.5"):
        args += ["--set", override]

    code = main(args)

    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.splitlines()[-1].startswith("fl: error: none of the 2 rounds received an update")
