"""examples/device_heterogeneity.py runs end to end with --quick, and its figures agree with each other and with the
run directories it writes."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.examples.test_examples import run_quick


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The example's main with --quick into a fresh folder: (summaries, printed output, folder)."""
    out = tmp_path_factory.mktemp("devices")
    summaries, printed = run_quick("device_heterogeneity", out)
    return summaries, printed, out


def test_writes_the_plot_and_three_run_directories(quick_run) -> None:
    summaries, printed, out = quick_run

    assert list(summaries) == ["sync", "deadline", "over-select"]
    png = out / "device_heterogeneity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"accuracy against virtual time: {png}" in printed
    for summary in summaries.values():
        assert summary.run_dir.parent == out
        assert (summary.run_dir / "events.jsonl").stat().st_size > 0
        assert len(summary.history) == 4  # --quick: 4 rounds


def test_the_deadline_and_over_selection_take_less_virtual_time(quick_run) -> None:
    summaries, _, _ = quick_run
    sync, deadline, over = summaries["sync"], summaries["deadline"], summaries["over-select"]

    # The same clients each round, each round no longer than the sync one: cutting the slow ones saves time.
    assert deadline.virtual_seconds < sync.virtual_seconds
    assert over.virtual_seconds < sync.virtual_seconds
    assert sync.late == 0  # nobody is late when a round waits for everyone
    assert deadline.late > 0 and over.late > 0
    assert deadline.dropped == sync.dropped  # failures are drawn per (round, client): the same clients fail
    for m in sync.history:  # 10 start; all that do not fail are kept
        assert (m["clients"], m["late"]) == (10 - m["dropped"], 0)
    for m in deadline.history:  # 10 start; each fails, arrives in time or is late
        assert m["clients"] + m["late"] + m["dropped"] == 10
    for m in over.history:  # 13 start; the first 10 that do not fail are kept, the rest are late
        assert (m["clients"], m["late"]) == (min(10, 13 - m["dropped"]), max(0, 3 - m["dropped"]))


def test_the_printed_table_matches_the_metrics(quick_run) -> None:
    summaries, printed, _ = quick_run
    limit = float(re.search(r"deadline: ([\d.]+) virtual seconds", printed).group(1))

    for name, summary in summaries.items():
        history = summary.history
        assert summary.virtual_seconds == history[-1]["virtual_time"]
        assert summary.virtual_seconds == pytest.approx(sum(m["round_seconds_virtual"] for m in history))
        assert summary.mean_round_seconds == pytest.approx(summary.virtual_seconds / len(history))
        assert summary.final_accuracy == history[-1]["test_accuracy"]
        rows = [json.loads(line) for line in (summary.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [row["virtual_time"] for row in rows] == [m["virtual_time"] for m in history]
        row = re.search(rf"^{re.escape(name)}\s+(.*)$", printed, re.MULTILINE).group(1).split()
        final, _, seconds, mean, dropped, late = row
        assert float(final) == pytest.approx(summary.final_accuracy, abs=5e-5)
        assert float(seconds) == pytest.approx(summary.virtual_seconds, abs=0.05)
        assert float(mean) == pytest.approx(summary.mean_round_seconds, abs=0.005)
        assert (int(dropped), int(late)) == (summary.dropped, summary.late)
    # The deadline (printed to two decimals) bounds every round of the deadline run.
    assert all(m["round_seconds_virtual"] <= limit + 0.005 for m in summaries["deadline"].history)
    assert all(math.isfinite(s.final_accuracy) and 0 <= s.final_accuracy <= 1 for s in summaries.values())
