"""bench dmel on a short clip: the report has its keys, agrees with librosa and measures real time."""

import argparse

import numpy as np

from interaction_jax.bench import dmel as bench_dmel


def test_bench_dmel_runs():
    results = bench_dmel.run(argparse.Namespace(seconds=5.0))
    expected = {
        "audio_seconds",
        "ours_s",
        "librosa_s",
        "speedup_vs_librosa",
        "max_abs_diff",
        "realtime_factor_ours",
    }
    assert set(results) == expected
    assert results["audio_seconds"] == 5.0
    assert results["max_abs_diff"] < 1e-4
    assert results["speedup_vs_librosa"] > 0
    assert 0 < results["realtime_factor_ours"] < 1  # featurising is far faster than real time
    assert np.isclose(results["speedup_vs_librosa"], results["librosa_s"] / results["ours_s"])


def test_synthetic_audio_is_realistic():
    wave = bench_dmel.synthetic_audio(3.0, seed=0)
    assert wave.dtype == np.float32 and wave.shape == (48_000,)
    assert np.abs(wave).max() <= 0.9 + 1e-6 and np.isfinite(wave).all()
    assert (wave == 0).sum() > 1000  # digital-silence gaps
    np.testing.assert_array_equal(wave, bench_dmel.synthetic_audio(3.0, seed=0))  # deterministic
