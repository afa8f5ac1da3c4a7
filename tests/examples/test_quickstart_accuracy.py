"""The README's main job reaches the accuracy peers report (about 0.51 on this setting).

Synthetic(1,1) has lognormal client sizes, so a few large clients hold much of the pooled test set and the round-20
accuracy of a single seed swings between about 0.36 and 0.65; the claim is about the mean over ten seeds.
"""

from __future__ import annotations

import numpy as np

from fl.config import load_config
from fl.simulation import run_simulation

SEEDS = range(10)


def test_quickstart_mean_final_accuracy_over_ten_seeds_is_at_least_045(tmp_path):
    finals = []
    for seed in SEEDS:
        config = load_config("examples/quickstart.toml", ['runtime.backend="local"', f"seed={seed}"])
        history = run_simulation(config, write=False, show_progress=False).history
        finals.append(history[-1]["test_accuracy"])

    assert np.mean(finals) >= 0.45, f"final accuracies per seed: {np.round(finals, 3)}"
