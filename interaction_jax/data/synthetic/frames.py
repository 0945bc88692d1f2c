"""Pillow renderers for the synthetic video stream (one frame per 200 ms chunk, default 80x80 RGB).

The frames must be easy for a tiny model yet not trivially constant: digits vary in font (the DejaVu TTFs
that ship inside matplotlib, so nothing is downloaded), size, colour, background and position, and the
background carries a little sensor noise. Distractors (non-digit glyphs, shapes) and flashes appear before
and after a cue so that "something changed" is not the same as "a digit appeared". For repcount, an object
moves periodically; with periods of 0.8-2 s, 5 fps sampling sees at least 4 frames per repetition.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

HW = tuple[int, int]
DEFAULT_HW: HW = (80, 80)
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
DISTRACTOR_GLYPHS = "AEFHKLMPRTXZ#?+&%@"  # never a digit: a distractor must not look like a cue


@functools.lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A DejaVu TTF shipped with matplotlib; cached because loading a face costs more than drawing."""
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)
    return ImageFont.truetype(path, size)


@dataclasses.dataclass(frozen=True)
class Style:
    """Look of a scene held fixed over an episode, so only the content changes from frame to frame."""

    bg: tuple[int, int, int]
    fg: tuple[int, int, int]
    font: str
    size: int  # glyph size in pixels


def _luma(c: tuple[int, int, int]) -> float:
    return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))  # type: ignore[return-value]


def random_style(rng: np.random.Generator, hw: HW = DEFAULT_HW) -> Style:
    """Random background/foreground with a guaranteed luminance contrast (the glyph must stay legible)."""
    bg = _colour(rng)
    fg = _colour(rng)
    for _ in range(64):
        if abs(_luma(fg) - _luma(bg)) >= 0.4:
            break
        fg = _colour(rng)
    else:
        fg = (0, 0, 0) if _luma(bg) > 0.5 else (255, 255, 255)
    h = min(hw)
    size = int(rng.integers(int(0.4 * h), int(0.7 * h) + 1))
    return Style(bg=bg, fg=fg, font=FONT_FILES[int(rng.integers(len(FONT_FILES)))], size=size)


def _finish(img: Image.Image, rng: np.random.Generator, noise: float) -> np.ndarray:
    arr = np.asarray(img, np.float32)
    if noise > 0:  # float32 draws: the noise is most of a frame's cost
        arr += np.float32(noise) * rng.standard_normal(arr.shape, dtype=np.float32)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def render_blank(rng: np.random.Generator, hw: HW = DEFAULT_HW, bg: tuple[int, int, int] | None = None,
                 noise: float = 3.0) -> np.ndarray:
    """uint8 [H, W, 3]: a flat background with slight sensor noise."""
    bg = _colour(rng) if bg is None else bg
    return _finish(Image.new("RGB", (hw[1], hw[0]), bg), rng, noise)


def _draw_glyph(img: Image.Image, text: str, style: Style, offset: tuple[float, float]) -> None:
    w, h = img.size
    ImageDraw.Draw(img).text((w / 2 + offset[0], h / 2 + offset[1]), text, fill=style.fg,
                             font=font(style.font, style.size), anchor="mm")


def render_digit(digit: str | int, rng: np.random.Generator, hw: HW = DEFAULT_HW, style: Style | None = None,
                 drift: float = 0.08, noise: float = 3.0) -> np.ndarray:
    """uint8 [H, W, 3]: ``digit`` drawn in ``style`` (random if None), shifted by up to ``drift`` x size."""
    digit = str(digit)
    if len(digit) != 1 or not digit.isdigit():
        raise ValueError(f"render_digit draws one digit 0-9, got {digit!r}")
    style = random_style(rng, hw) if style is None else style
    img = Image.new("RGB", (hw[1], hw[0]), style.bg)
    max_shift = drift * min(hw)
    _draw_glyph(img, digit, style, tuple(rng.uniform(-max_shift, max_shift, 2)))
    return _finish(img, rng, noise)


def render_distractor(rng: np.random.Generator, hw: HW = DEFAULT_HW, style: Style | None = None,
                      noise: float = 3.0) -> np.ndarray:
    """A non-digit glyph or a plain shape, in a random colour, somewhere on the scene's background."""
    style = random_style(rng, hw) if style is None else style
    img = Image.new("RGB", (hw[1], hw[0]), style.bg)
    colour = _colour(rng)
    h, w = hw
    if rng.random() < 0.5:
        glyph = DISTRACTOR_GLYPHS[int(rng.integers(len(DISTRACTOR_GLYPHS)))]
        size = int(rng.integers(int(0.25 * min(hw)), int(0.6 * min(hw)) + 1))
        s = dataclasses.replace(style, fg=colour, size=size,
                                font=FONT_FILES[int(rng.integers(len(FONT_FILES)))])
        _draw_glyph(img, glyph, s, tuple(rng.uniform(-0.25, 0.25, 2) * (w, h)))
    else:
        r = rng.uniform(0.08, 0.25) * min(hw)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        box = (cx - r, cy - r, cx + r, cy + r)
        draw = ImageDraw.Draw(img)
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return _finish(img, rng, noise)


def render_flash(rng: np.random.Generator, hw: HW = DEFAULT_HW, noise: float = 3.0) -> np.ndarray:
    """A whole-frame flash (bright or saturated): a large change that carries no digit."""
    colour = (255, 255, 255) if rng.random() < 0.5 else _colour(rng)
    return render_blank(rng, hw, colour, noise)


@dataclasses.dataclass(frozen=True)
class Motion:
    """A periodic motion for repcount: ``reps`` cycles of ``period`` s starting at ``start_s``.

    One repetition is one full cycle rest -> extreme -> rest, so the k-th repetition completes at
    ``start_s + k * period``. Outside the active span the object rests.
    """

    kind: str  # "ball" (bounces up), "bar" (grows), "slide" (moves right)
    start_s: float
    period: float
    reps: int
    colour: tuple[int, int, int]
    bg: tuple[int, int, int]
    size: float = 0.12  # object scale, as a fraction of min(H, W)

    def phase(self, t: float) -> float:
        """Displacement in [0, 1] at time t: 0 at rest, 1 at the far end of the cycle."""
        u = (t - self.start_s) / self.period
        if u <= 0 or u >= self.reps:
            return 0.0
        return 0.5 - 0.5 * math.cos(2 * math.pi * u)

    def rep_times(self) -> list[float]:
        return [self.start_s + k * self.period for k in range(1, self.reps + 1)]


MOTION_KINDS = ("ball", "bar", "slide")


def random_motion(rng: np.random.Generator, start_s: float, period: float, reps: int) -> Motion:
    bg = _colour(rng)
    colour = _colour(rng)
    for _ in range(64):
        if abs(_luma(colour) - _luma(bg)) >= 0.35:
            break
        colour = _colour(rng)
    else:
        colour = (0, 0, 0) if _luma(bg) > 0.5 else (255, 255, 255)
    kind = MOTION_KINDS[int(rng.integers(len(MOTION_KINDS)))]
    return Motion(kind, float(start_s), float(period), int(reps), colour, bg, float(rng.uniform(0.09, 0.15)))


def render_object(t: float, motion: Motion, rng: np.random.Generator, hw: HW = DEFAULT_HW,
                  noise: float = 3.0) -> np.ndarray:
    """uint8 [H, W, 3]: the moving object of ``motion`` at time ``t`` (seconds)."""
    h, w = hw
    img = Image.new("RGB", (w, h), motion.bg)
    draw = ImageDraw.Draw(img)
    p = motion.phase(t)
    r = motion.size * min(hw)
    margin = 0.1 * min(hw)
    if motion.kind == "ball":
        cy = (h - margin - r) - p * (h - 2 * margin - 2 * r)
        draw.ellipse((w / 2 - r, cy - r, w / 2 + r, cy + r), fill=motion.colour)
    elif motion.kind == "bar":
        top = (h - margin - r) - p * (h - 2 * margin - r)
        draw.rectangle((w / 2 - r, top, w / 2 + r, h - margin), fill=motion.colour)
    elif motion.kind == "slide":
        cx = (margin + r) + p * (w - 2 * margin - 2 * r)
        draw.rectangle((cx - r, h / 2 - r, cx + r, h / 2 + r), fill=motion.colour)
    else:
        raise ValueError(f"unknown motion kind {motion.kind!r}; kinds: {', '.join(MOTION_KINDS)}")
    return _finish(img, rng, noise)
