"""Outside-input sweep of a checkpoint: 8 random DTMF strings and 8 random typed instructions, each over a
-60 dBFS noise floor and over digital silence, through ``stream_file`` (the path ``stream`` uses).

    python experiments/002_learning/outside_sweep.py CHECKPOINT [--json out.json]

The DTMF is made here (plain two-sine tones at 16 kHz, other lengths, gaps and levels than the generator),
not by data/synthetic. Prints, per input kind: replies that start 0-0.8 s after the user, first digit right,
and typed instructions answered within 0.4 s with the right digit ("Outside inputs" in the README).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from flax import linen as nn

from interaction_jax.data.synthetic.voices import decode_dtmf
from interaction_jax.serve.engine import load_params
from interaction_jax.serve.file_mode import stream_file

RATE = 16_000
ROWS, COLS = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
KEYS = "123A456B789C*0#D"


def dtmf(digits: str, start: float, tone: float, gap: float, level_dbfs: float, floor: np.ndarray) -> tuple:
    wave = floor.copy()
    t = np.arange(round(tone * RATE)) / RATE
    edge = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    onset = start
    for d in digits:
        r, c = divmod(KEYS.index(d), 4)
        i = round(onset * RATE)
        wave[i : i + t.size] += 10 ** (level_dbfs / 20) / 2 * (np.sin(2 * np.pi * ROWS[r] * t)
                                                              + np.sin(2 * np.pi * COLS[c] * t)) * edge
        onset += tone + gap
    return wave.astype(np.float32), onset - gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--json")
    args = ap.parse_args()
    config, params = load_params(args.checkpoint)
    params = nn.unbox(params)
    rng = np.random.default_rng(2026)
    cases = [("".join(rng.choice(list("0123456789"), int(rng.integers(2, 6)))), rng.uniform(0.5, 1.2),
              rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.2), rng.uniform(-22, -9)) for _ in range(8)]
    typed = [(float(rng.uniform(0.3, 1.2)), str(rng.integers(10)), int(rng.integers(2, 5))) for _ in range(8)]
    out = {}
    for kind in ("floor", "zeros"):  # the same strings and instructions over a -60 dBFS floor, then exact zeros
        noise = np.random.default_rng(0)
        reply_ok = first_ok = typed_ok = 0
        for (digits, start, tone, gap, level), (t, digit, k) in zip(cases, typed, strict=True):
            def floor(seconds: float, noise=noise, kind=kind) -> np.ndarray:
                n = seconds * RATE
                return 10 ** (-60 / 20) * noise.standard_normal(n) if kind == "floor" else np.zeros(n)

            wave, end = dtmf(digits, start, tone, gap, level, floor(6))
            heard = decode_dtmf(stream_file(config, params, wave, progress=False)["audio"])
            reply_ok += bool(heard) and 0.0 < heard[0][0] - end < 0.8
            first_ok += bool(heard) and heard[0][1] == digits[0]
            res = stream_file(config, params, floor(7).astype(np.float32), text_events=[(t, f"say {digit} in {k} s")],
                              progress=False)
            heard = decode_dtmf(res["audio"])
            typed_ok += bool(heard) and abs(heard[0][0] - (t + k)) <= 0.4 and heard[0][1] == digit
        out[kind] = {"reply_0_0.8s": reply_ok, "first_digit_right": first_ok, "typed_on_time_right": typed_ok}
        print(kind, out[kind], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
