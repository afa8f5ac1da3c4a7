"""Tests of simulations/profiles.py: distribution and availability specs, device tables, traces, task times."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from simulations.profiles import (
    FIELD_INDEX,
    Always,
    Bernoulli,
    Constant,
    DeviceProfiles,
    LogNormal,
    Trace,
    Uniform,
    load_trace,
    parse_availability,
    parse_distribution,
    sample_profiles,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ROOT / "examples" / "devices"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def profiles(n: int, **fields) -> DeviceProfiles:
    """Ideal profiles for `n` clients with the given fields replaced."""
    base = {"compute": np.zeros(n), "bandwidth_up": np.full(n, np.inf), "bandwidth_down": np.full(n, np.inf),
            "latency": np.zeros(n), "dropout": np.zeros(n)}
    return DeviceProfiles(**{**base, **fields})


# ---- distributions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("constant:value=0.5", Constant(0.5)),
        ("constant:value=inf", Constant(math.inf)),
        (" uniform: low = 1e6 , high=10e6 ", Uniform(1e6, 10e6)),
        ("uniform:high=2,low=1", Uniform(1.0, 2.0)),
        ("lognormal:median=0.002,sigma=1.0", LogNormal(0.002, 1.0)),
    ],
)
def test_parse_distribution_reads_good_specs(spec, expected):
    assert parse_distribution(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gauss:mu=1", "unknown distribution 'gauss'"),
        ("constant", "missing parameter 'value'"),
        ("uniform:low=1", "missing parameter 'high'"),
        ("uniform:low=1,high=2,mid=3", "unknown parameter 'mid'"),
        ("uniform:low=1,low=2", "given twice"),
        ("constant:value", "expected key=value"),
        ("constant:value=fast", "value must be a number, got 'fast'"),
        ("constant:value=nan", "must be a number, got nan"),
        ("constant:value=-1", "value >= 0"),
        ("uniform:low=-1,high=2", "0 <= low <= high"),
        ("uniform:low=3,high=2", "0 <= low <= high"),
        ("uniform:low=1,high=inf", "high < inf"),
        ("lognormal:median=0,sigma=1", "0 < median"),
        ("lognormal:median=1,sigma=-1", "0 <= sigma"),
        (0.5, "must be a string"),
    ],
)
def test_parse_distribution_rejects_bad_specs_clearly(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_distribution(spec)


def test_distributions_sample_their_shapes():
    # Execute
    rng = np.random.default_rng(0)
    constant = parse_distribution("constant:value=3").sample(5, rng)
    uniform = parse_distribution("uniform:low=1,high=2").sample(10_000, rng)
    lognormal = parse_distribution("lognormal:median=0.002,sigma=1.0").sample(100_000, rng)
    # Assert
    np.testing.assert_array_equal(constant, np.full(5, 3.0))
    assert uniform.min() >= 1 and uniform.max() < 2 and abs(uniform.mean() - 1.5) < 0.01
    assert lognormal.min() > 0 and np.median(lognormal) == pytest.approx(0.002, rel=0.02)
    assert np.std(np.log(lognormal)) == pytest.approx(1.0, rel=0.02)


# ---- sampling ----------------------------------------------------------------------------------------------------


SPEC = {"compute": "lognormal:median=0.002,sigma=1.0", "bandwidth_up": "uniform:low=1e6,high=10e6"}


def test_sample_profiles_same_seed_same_arrays_other_seed_differs():
    # Execute
    first, again, other = (sample_profiles(SPEC, 50, seed) for seed in (7, 7, 8))
    # Assert
    for name in FIELD_INDEX:
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.compute, other.compute)
    assert not np.array_equal(first.bandwidth_up, other.bandwidth_up)


def test_each_field_draws_from_its_own_generator():
    # Execute
    alone = sample_profiles({"compute": SPEC["compute"]}, 20, seed=3)
    with_more = sample_profiles({**SPEC, "latency": "uniform:low=0.1,high=0.5"}, 20, seed=3)
    # Assert
    np.testing.assert_array_equal(alone.compute, with_more.compute)
    expected = np.random.default_rng([3, FIELD_INDEX["compute"]]).lognormal(math.log(0.002), 1.0, 20)
    np.testing.assert_array_equal(alone.compute, expected)
    assert FIELD_INDEX == {"compute": 0, "bandwidth_up": 1, "bandwidth_down": 2, "latency": 3, "dropout": 4}


def test_sample_profiles_defaults_give_an_ideal_device():
    # Execute
    result = sample_profiles({}, 4, seed=0)
    # Assert
    assert result.num_clients == 4 and isinstance(result.availability, Always)
    np.testing.assert_array_equal(result.compute, np.zeros(4))
    np.testing.assert_array_equal(result.bandwidth_up, np.full(4, np.inf))
    np.testing.assert_array_equal(result.bandwidth_down, np.full(4, np.inf))
    assert not result.latency.any() and not result.dropout.any()
    assert result.task_seconds(3, samples=1000, download_bytes=1e9, upload_bytes=1e9) == 0.0


@pytest.mark.parametrize(
    "spec, num_clients, message",
    [
        ({"cpu": "constant:value=1"}, 3, "allowed: ['availability', 'bandwidth_down'"),
        ({"dropout": "uniform:low=0,high=2"}, 3, "can exceed 1"),
        ({"dropout": "lognormal:median=0.1,sigma=1"}, 3, "can exceed 1"),
        ({"compute": "constant:value=inf"}, 3, "compute of client 0 must be finite"),
        ({"bandwidth_up": "constant:value=0"}, 3, "bandwidth_up of client 0 must be > 0"),
        ({"availability": "sometimes"}, 3, "unknown availability 'sometimes'"),
        ({}, 0, "num_clients >= 1"),
    ],
)
def test_sample_profiles_rejects_bad_input(spec, num_clients, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_profiles(spec, num_clients, seed=0)


# ---- task time ---------------------------------------------------------------------------------------------------


def test_task_seconds_by_hand():
    # Prepare
    result = profiles(
        2, compute=[0.01, 0.001], bandwidth_up=[0.5e6, np.inf], bandwidth_down=[1e6, 4e6], latency=[0.5, 0.1]
    )
    # Execute / Assert: latency + download + training + upload
    assert result.task_seconds(0, samples=100, download_bytes=2e6, upload_bytes=1e6) == pytest.approx(
        0.5 + 2.0 + 1.0 + 2.0
    )
    assert result.task_seconds(1, samples=100, download_bytes=2e6, upload_bytes=1e6) == pytest.approx(
        0.1 + 0.5 + 0.1 + 0.0
    )
    assert isinstance(result.task_seconds(1, 0, 0, 0), float)


def test_device_profiles_reject_bad_input_and_are_read_only():
    # Prepare
    result = profiles(2)
    # Execute / Assert
    with pytest.raises(ValueError, match=r"client_id must be in \[0, 2\)"):
        result.task_seconds(2, 1, 1, 1)
    with pytest.raises(ValueError, match="must be >= 0"):
        result.task_seconds(0, -1, 1, 1)
    with pytest.raises(ValueError):
        result.compute[0] = 1.0
    with pytest.raises(ValueError, match="one length"):
        profiles(2, latency=np.zeros(3))
    with pytest.raises(ValueError, match=r"dropout of client 1 must be in \[0, 1\], got 1.5"):
        profiles(2, dropout=[0.0, 1.5])


# ---- device tables -----------------------------------------------------------------------------------------------


def test_table_rows_sorted_by_client_cycle_and_replace_distributions(tmp_path):
    # Prepare: rows out of order; compute is in both the table and the spec
    table = write(tmp_path, "t.csv", "client,compute,dropout\n2,0.3,0.2\n0,0.1,0\n1,0.2,0.1\n")
    spec = {"table": table, "compute": "constant:value=9", "latency": "constant:value=0.5"}
    # Execute
    result = sample_profiles(spec, 7, seed=0)
    # Assert
    np.testing.assert_array_equal(result.compute, [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1])
    np.testing.assert_array_equal(result.dropout, [0.0, 0.1, 0.2, 0.0, 0.1, 0.2, 0.0])
    np.testing.assert_array_equal(result.latency, np.full(7, 0.5))
    np.testing.assert_array_equal(result.bandwidth_up, np.full(7, np.inf))


@pytest.mark.parametrize(
    "text, message",
    [
        ("compute\n0.1\n", "must have ['client']"),
        ("client,cpu\n0,0.1\n", "header ['client', 'cpu']"),
        ("client,compute\n", "no rows"),
        ("client,compute\n0,0.1,7\n", "exactly 2 values"),
        ("client,compute\nzero,0.1\n", "client id must be an integer >= 0, got 'zero'"),
        ("client,compute\n0,0.1\n0,0.2\n", "unique"),
        ("client,compute\n0,slow\n", "compute of client 0 must be a number"),
        ("client,dropout\n0,0\n4,1.5\n", "dropout of client 4 must be in [0, 1], got 1.5"),
    ],
)
def test_bad_tables_are_rejected_clearly(tmp_path, text, message):
    table = write(tmp_path, "t.csv", text)
    with pytest.raises(ValueError, match=re.escape(message)):
        sample_profiles({"table": table}, 3, seed=0)


# ---- availability ------------------------------------------------------------------------------------------------


def test_always_and_bernoulli_by_hand():
    # Prepare
    always, bernoulli = parse_availability("always"), parse_availability("bernoulli:p=0.3")
    # Assert
    assert always.online_at_selection(5, 1e9, 0.999) and always.online_at_finish(5, 1e9)
    assert bernoulli == Bernoulli(0.3)
    assert bernoulli.online_at_selection(0, 0.0, 0.29) and not bernoulli.online_at_selection(0, 0.0, 0.3)
    assert bernoulli.online_at_finish(0, 123.0)
    assert not Bernoulli(0.0).online_at_selection(0, 0.0, 0.0) and Bernoulli(1.0).online_at_selection(0, 0.0, 0.9999)


TRACE = "trace,start,end\n5,0,10\n5,50,60\n2,20,30\n"


def test_trace_maps_clients_to_sorted_ids_and_wraps_time(tmp_path):
    # Prepare: ids 2 and 5 -> client 0 (and 2, 4, ...) follows trace 2, client 1 (and 3, ...) trace 5
    trace = parse_availability(f"trace:file={write(tmp_path, 'trace.csv', TRACE)},period=100")
    # Assert
    assert isinstance(trace, Trace)
    assert [trace.online_at_finish(0, t) for t in (19.9, 20, 25, 29.9, 30, 55)] == [0, 1, 1, 1, 0, 0]
    assert [trace.online_at_finish(1, t) for t in (0, 5, 10, 49, 50, 59.99, 60, 99.9)] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert trace.online_at_finish(2, 25) and trace.online_at_finish(3, 55) and not trace.online_at_finish(3, 25)
    assert trace.online_at_finish(1, 300 + 5) and not trace.online_at_finish(1, 300 + 15)
    assert trace.online_at_finish(0, 1e6 + 25) and trace.online_at_finish(0, -75)
    assert trace.online_at_selection(1, 5, u=0.999) and not trace.online_at_selection(1, 15, u=0.0)


@pytest.mark.parametrize(
    "text, period, message",
    [
        ("trace,begin,end\n0,0,10\n", 100, "must have ['trace', 'start', 'end']"),
        ("trace,start,end\n", 100, "no rows"),
        ("trace,start,end\na,0,10\n", 100, "trace id must be an integer >= 0, got 'a'"),
        ("trace,start,end\n-1,0,10\n", 100, "trace id must be an integer >= 0"),
        ("trace,start,end\n0,10,10\n", 100, "needs 0 <= start < end <= period=100"),
        ("trace,start,end\n0,-5,10\n", 100, "got [-5.0, 10.0)"),
        ("trace,start,end\n0,50,101\n", 100, "end <= period"),
        ("trace,start,end\n0,0,soon\n", 100, "trace 0 end must be a number"),
        ("trace,start,end\n0,0,10\n", 0, "period must be > 0"),
        ("trace,start,end\n0,0,10\n", math.inf, "period must be > 0 and finite"),
    ],
)
def test_bad_traces_are_rejected_clearly(tmp_path, text, period, message):
    path = write(tmp_path, "trace.csv", text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_trace(path, period)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("always:p=1", "unknown parameter 'p'; it takes no parameters"),
        ("bernoulli", "missing parameter 'p'"),
        ("bernoulli:p=1.5", "0 <= p <= 1"),
        ("bernoulli:p=often", "p must be a number"),
        ("trace:file=x.csv", "missing parameter 'period'"),
        ("weekly", "choose one of ['always', 'bernoulli', 'trace']"),
    ],
)
def test_parse_availability_rejects_bad_specs_clearly(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_availability(spec)


# ---- shipped examples --------------------------------------------------------------------------------------------


def test_example_table_and_trace_load():
    # Execute
    result = sample_profiles(
        {"table": str(DEVICES / "table.csv"), "availability": f"trace:file={DEVICES / 'trace.csv'},period=86400"},
        12,
        seed=0,
    )
    # Assert: five device types from fast to slow, repeating; three traces, client i follows trace i % 3
    assert result.compute[0] == 0.0005 and result.compute[4] == 0.01 and result.compute[5] == 0.0005
    assert np.all(np.diff(result.compute[:5]) > 0) and np.all(np.diff(result.bandwidth_up[:5]) < 0)
    assert result.dropout.max() == 0.1 and result.latency.min() == 0.05
    assert len(result.availability.starts) == 3
    night, office = 3 * 3600, 10 * 3600
    assert result.availability.online_at_finish(0, night) and not result.availability.online_at_finish(0, office)
    assert result.availability.online_at_finish(4, office) and not result.availability.online_at_finish(4, night)
    assert result.availability.online_at_finish(3, night + 86400)


def test_readme_toml_examples_sample(monkeypatch):
    # Prepare: README paths are relative to the repository root
    monkeypatch.chdir(ROOT)
    readme = (DEVICES / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    # Execute
    results = [sample_profiles(tomllib.loads(block)["devices"], 10, seed=1) for block in blocks]
    # Assert
    assert len(blocks) == 2 and all(result.num_clients == 10 for result in results)
    for key in ("compute", "bandwidth_up", "bandwidth_down", "latency", "availability", "dropout", "table"):
        assert f"`{key}`" in readme
