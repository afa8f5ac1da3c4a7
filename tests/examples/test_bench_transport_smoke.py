"""benchmarks/bench_transport.py runs end to end on tiny sizes (its figures are not checked, only its plumbing)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_transport.py"
TINY = ("data.num_clients=8", "sampling.per_round=2", "model.hidden=[8]")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_transport", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_loopback_times_every_step_and_returns_the_model_unchanged(bench):
    times = bench.loopback_seconds(num_floats=100_000, repeats=2)

    assert set(times) == {"clone", "publish", "download", "upload", "round trip"}
    assert all(len(t) == 2 and all(s > 0 for s in t) for t in times.values())


def test_codec_table_and_targets_on_a_tiny_workload(bench, capsys):
    paths = [  # the labels the targets read; the codec rows on the direct channel, whose counts are exact
        bench.PATHS[0], ("gRPC, identity", "grpc", "identity"), ("gRPC, ef(topk 1%)", "direct", "ef(topk:ratio=0.01)"),
        ("gRPC, topk 1% (no EF)", "direct", "topk:ratio=0.01"),
    ]

    runs = bench.codec_table([0], rounds=2, paths=paths, extra=TINY)
    rows = bench.targets(runs)
    bench.print_targets(rows, [0])

    out = capsys.readouterr().out
    assert "mean over 1 seed (0)" in out and "targets (from table 2, 1 seed)" in out
    assert all(not r.errors and len(r.seconds) == 1 and math.isfinite(r.accuracy[0]) for r in runs.values())
    # the direct channel counts exactly the codec's payload for each of the 2 clients of a round
    assert runs["gRPC, ef(topk 1%)"].up_bytes[0] == 2 * bench.payload_bytes("topk:ratio=0.01", 60 * 8 + 8 + 8 * 10 + 10)
    assert [met for _, _, met in rows][-1] is None and len(rows) == 4


def test_sweep_table_compares_each_codec_with_identity_at_each_participation(bench, capsys):
    codecs = [("identity", "identity"), ("ef(topk 1%)", "ef(topk:ratio=0.01)")]

    found = bench.sweep_table([0], rounds=2, per_round=(2, 4), codecs=codecs, extra=TINY)

    out = capsys.readouterr().out
    assert sorted(found) == [2, 4] and all(len(runs["identity"].accuracy) == 1 for runs in found.values())
    assert out.count("ef(topk 1%)") == 2 and "within 1 pt" in out
