"""Frame renderers: shapes, dtypes, determinism, and that a cue is visible."""

from __future__ import annotations

import numpy as np
import pytest

from interaction_jax.data import synthetic
from interaction_jax.data.synthetic import frames as fr


def test_shapes_and_determinism():
    for hw in ((80, 80), (48, 64)):
        for img in (fr.render_blank(np.random.default_rng(0), hw),
                    fr.render_digit(3, np.random.default_rng(0), hw),
                    fr.render_distractor(np.random.default_rng(0), hw),
                    fr.render_flash(np.random.default_rng(0), hw)):
            assert img.shape == (*hw, 3) and img.dtype == np.uint8
    one, two = (fr.render_digit(5, np.random.default_rng(1)) for _ in range(2))
    assert np.array_equal(one, two)
    with pytest.raises(ValueError, match="one digit"):
        fr.render_digit("12", np.random.default_rng(0))


def test_digit_is_visible_against_the_blank_background():
    for seed in range(20):
        rng = np.random.default_rng(seed)
        style = fr.random_style(rng)
        blank = fr.render_blank(rng, bg=style.bg).astype(int)
        digit = fr.render_digit(seed % 10, rng, style=style).astype(int)
        changed = np.abs(digit - blank).max(axis=2) > 40
        assert changed.mean() > 0.015  # a legible glyph (even a thin "1") covers a few percent of the frame
        assert np.abs(blank - np.array(style.bg)).mean() < 4  # blank = background + slight noise


def test_digits_differ_from_each_other():
    style = fr.random_style(np.random.default_rng(0))
    a = fr.render_digit(1, np.random.default_rng(0), style=style, drift=0).astype(int)
    b = fr.render_digit(8, np.random.default_rng(0), style=style, drift=0).astype(int)
    assert np.abs(a - b).max(axis=2).astype(bool).mean() > 0.03


def test_cuespeak_cue_frame_differs_from_blank():
    ep = synthetic.generate("cuespeak", 4)
    k = ep.labels["cue_frame"]
    before, cue = ep.frames[k - 1].astype(int), ep.frames[k].astype(int)
    assert np.abs(cue - before).max(axis=2).mean() > 10 or np.abs(cue - before).max() > 100


def test_object_moves_periodically():
    motion = fr.Motion("ball", start_s=1.0, period=1.0, reps=3, colour=(255, 0, 0), bg=(0, 0, 0))
    rng = np.random.default_rng(0)
    rest = fr.render_object(0.0, motion, rng, noise=0)
    top = fr.render_object(1.5, motion, rng, noise=0)
    again = fr.render_object(2.0, motion, rng, noise=0)
    after = fr.render_object(5.0, motion, rng, noise=0)
    assert not np.array_equal(rest, top)
    assert np.array_equal(rest, again) and np.array_equal(rest, after)
    assert motion.rep_times() == [2.0, 3.0, 4.0]
    for kind in fr.MOTION_KINDS:
        m = fr.Motion(kind, 0.0, 1.0, 1, (255, 255, 255), (0, 0, 0))
        assert not np.array_equal(fr.render_object(0.0, m, rng, noise=0), fr.render_object(0.5, m, rng, noise=0))
