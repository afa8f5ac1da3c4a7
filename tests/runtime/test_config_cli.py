"""Configuration and the `fl` command: overrides, one-line errors with exit code 2, frozen public options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fl.cli import build_parser, main
from fl.config import ConfigError, load_config
from strategies.registry import STRATEGIES

QUICKSTART = "examples/quickstart.toml"


def run_fl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fl.cli", *args], capture_output=True, text=True, timeout=120)


def test_overrides_reach_nested_sections_and_strategy_options():
    config = load_config(QUICKSTART, ["strategy.name=fedadam", "strategy.server_lr=0.01", "rounds=50",
                                      "client.lr=0.1", "model.hidden=[64, 64]"])

    assert (config.strategy.name, config.strategy.options, config.rounds) == ("fedadam", {"server_lr": 0.01}, 50)
    assert config.client.lr == 0.1 and config.model.hidden == [64, 64]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.name=nope", "strategy 'nope'"),
        ("bogus=1", "unknown key 'bogus'; allowed: name, seed, rounds"),
        ("client.bogus=1", "unknown key 'client.bogus'"),
        ("sampling.per_round=101", "sampling.per_round must be in [1, data.num_clients=100], got 101"),
        ("client.lr=-0.1", "client.lr must be > 0, got -0.1"),
        ("client.optimizer=lbfgs", "client.optimizer = 'lbfgs' is not one of: sgd, adam, adamw"),
        ("strategy.server_lr=oops", "server_lr"),
        ("rounds=2.5", "rounds must be int"),
        ("strategy.wrong_option=1", "wrong_option"),
        ("max_virtual_seconds=-1", "max_virtual_seconds must be 0 (no limit) or a finite number"),
    ],
)
def test_bad_values_raise_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, [override])

    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_an_asynchronous_strategy_refuses_synchronous_round_settings():
    with pytest.raises(ConfigError, match="sampling.deadline and sampling.over_select shape synchronous rounds"):
        load_config(QUICKSTART, ["strategy.name=fedbuff", "sampling.deadline=5"])


def test_unknown_strategy_error_lists_the_allowed_names():
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, ["strategy.name=nope"])

    assert all(name in str(error.value) for name in STRATEGIES)


def test_cli_bad_config_prints_one_line_and_exits_2_without_traceback():
    completed = run_fl("run", QUICKSTART, "--set", "strategy.name=nope")

    assert completed.returncode == 2
    assert completed.stderr.strip().startswith("fl: error:")
    assert "Traceback" not in completed.stderr and len(completed.stderr.strip().splitlines()) == 1


def test_cli_missing_config_file_exits_2(capsys):
    assert main(["run", "no/such/file.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_lists_every_strategy_with_a_description():
    completed = run_fl("strategies")

    assert completed.returncode == 0
    lines = completed.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(STRATEGIES)
    assert all(len(line.split(maxsplit=2)) == 3 for line in lines)
    kinds = {line.split()[0]: line.split()[1] for line in lines}
    assert kinds["fedavg"] == "synchronous" and kinds["fedbuff"] == kinds["fedcompass"] == "asynchronous"


def test_cli_runs_a_small_simulation_and_plots_it(tmp_path):
    completed = run_fl("run", QUICKSTART, "--quiet", "--set", f'output_dir="{tmp_path}"', "--set", "rounds=2",
                       "--set", "data.num_clients=10", "--set", "sampling.per_round=3", "--set", 'runtime.backend="local"')
    assert completed.returncode == 0, completed.stderr
    plotted = run_fl("plot", str(tmp_path / "quickstart"))

    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "quickstart" / "curves.png").exists()


def test_public_cli_options_are_frozen():
    """Changing the CLI breaks users' scripts: update this list on purpose, never by accident."""
    commands = build_parser()._subparsers._group_actions[0].choices

    options = {name: sorted(o for action in sub._actions for o in action.option_strings) for name, sub in commands.items()}

    assert options == {
        "run": ["--address", "--help", "--quiet", "--set", "-h"],
        "server": ["--config", "--help", "--listen", "--quiet", "--set", "-h"],
        "client": ["--client-id", "--delay", "--help", "--replace", "--root-cert", "--server", "--timeout", "--token", "-h"],
        "node": ["--config", "--help", "--listen", "--node-id", "--peers", "--root-cert", "--secret-file", "--set",
                 "--tls-cert", "--tls-key", "-h"],
        "token": ["--client-id", "--help", "--secret-file", "-h"],
        "strategies": ["--help", "-h"],
        "plot": ["--help", "--out", "--x", "-h"],
    }
