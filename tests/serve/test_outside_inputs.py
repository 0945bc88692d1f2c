"""The trained reference model on inputs made outside the task code, through the user's own command.

A user who synthesises DTMF digits with any tool and runs
``python -m interaction_jax stream --checkpoint experiments/002_learning/model --audio in.wav --out out.wav``
should hear the model answer; a typed "say D in K s" through ``--text-events`` should be answered at K s.
The inputs here are made by the few lines below, not by ``data/synthetic``: another sample rate (44.1 kHz,
so ``stream`` resamples), other tone levels, lengths and gaps, and no echo. Most carry a noise floor like any
microphone (Gaussian, -60 dBFS, inside the -70..-50 dBFS the training rooms use); the typed instructions are
also given over digital silence (exact zeros), as a file from a synthesiser is. The model is the float16
export of experiment 002's run 13, committed beside its config (run 7 until session 13). Run 4, trained
before 15% of the training rooms were digitally silent, answered 1 of 8 typed instructions over zeros on
time with the right digit; runs 7 and 13 answer 8 of 8 (experiments/002_learning/README.md, "Outside
inputs"). Run 13 says the four DTMF strings back in order with one digit too many ("227", "3803", "51966",
"662"); the assertions below were set on run 7, which got only first digits right, and still hold.

What is asserted is what that checkpoint does (measured on these files; experiments/002_learning/README.md,
"Outside inputs"), so a change that breaks the path, the resampling, the export or the model's learned
turn-taking fails here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data.synthetic.voices import decode_dtmf

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "experiments" / "002_learning" / "model"
RATE = 44_100
ROWS, COLS = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
KEYS = "123A456B789C*0#D"


NOISE_FLOOR_DBFS = -56.0  # -60 dBFS after resampling to 16 kHz (the floor is white at 44.1 kHz)


def noise_floor(seconds: float, seed: int = 0) -> np.ndarray:
    return 10 ** (NOISE_FLOOR_DBFS / 20) * np.random.default_rng(seed).standard_normal(round(seconds * RATE))


def dtmf_wav(path: Path, digits: str, *, start_s: float, tone_s: float, gap_s: float, level_dbfs: float,
             total_s: float) -> float:
    """Write ``digits`` as plain two-sine DTMF (5 ms raised-cosine edges) over the noise floor; returns when the
    last tone ends."""
    t = np.arange(round(tone_s * RATE)) / RATE
    edge = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)
    wave = noise_floor(total_s, seed=len(digits))
    onset = start_s
    for d in digits:
        r, c = divmod(KEYS.index(d), 4)
        tone = (np.sin(2 * np.pi * ROWS[r] * t) + np.sin(2 * np.pi * COLS[c] * t)) * edge
        i = round(onset * RATE)
        wave[i : i + t.size] += 10 ** (level_dbfs / 20) / 2 * tone
        onset += tone_s + gap_s
    sf.write(path, wave.astype(np.float32), RATE)
    return onset - gap_s


def stream(tmp_path: Path, audio: Path, *extra: str) -> tuple[np.ndarray, list]:
    """The user's command in a fresh process. Files of one length share a program, so a persistent
    compilation cache (the same compiled code, not different numerics) saves the recompiles."""
    out = tmp_path / "out.wav"
    cmd = [sys.executable, "-m", "interaction_jax", "stream", "--checkpoint", str(MODEL), "--audio", str(audio),
           "--out", str(out), *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path.parent / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wave, sr = sf.read(out, dtype="float32")
    assert sr == 16_000
    return wave, json.loads(out.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def model_present():
    assert (MODEL / "params.npz").exists() and (MODEL / "config.json").exists(), f"{MODEL} is missing"


# (digits, first tone onset s, tone s, gap s, level dBFS): lengths, gaps and levels the generator does not use.
DTMF_CASES = [("27", 0.9, 0.12, 0.13, -14.0), ("380", 1.3, 0.09, 0.16, -20.0), ("5196", 0.7, 0.15, 0.10, -9.0),
              ("62", 1.1, 0.11, 0.19, -17.0)]


def test_outside_dtmf_is_answered_after_the_user_with_the_digits_it_heard(tmp_path, model_present):
    """The model waits for the user to finish, answers promptly, and starts with the digit it heard first."""
    replies = []
    for digits, start, tone, gap, level in DTMF_CASES:
        wav = tmp_path / f"in_{digits}.wav"
        user_end = dtmf_wav(wav, digits, start_s=start, tone_s=tone, gap_s=gap, level_dbfs=level, total_s=5.0)
        out, transcript = stream(tmp_path, wav)
        heard = decode_dtmf(out)
        said = "".join(d for _, d in heard)
        onset = heard[0][0] - user_end if heard else None
        replies.append((digits, said, onset, [e["text"] for e in transcript]))
    print("\n".join(map(str, replies)))
    # Turn-taking on every file: a reply exists, and it starts after the user's last tone, within 0.8 s.
    for digits, said, onset, _ in replies:
        assert said, f"no reply to {digits}: {replies}"
        assert 0.0 < onset < 0.8, f"reply to {digits} started {onset:+.2f} s after the user ended: {replies}"
    # Content: the first reply digit is the user's first digit on at least half the files (3 of 4 measured;
    # a guess would get >= 2 of 4 with probability ~0.05).
    assert sum(said[0] == digits[0] for digits, said, _, _ in replies) >= 2, replies


TYPED_CASES = [(0.6, "7", 3), (1.0, "4", 2), (0.4, "9", 4)]


def test_typed_instruction_through_text_events_is_answered_on_time(tmp_path, model_present):
    """``say D in K s`` typed at t (no audio from the user): the model speaks at about t + K s."""
    silence = tmp_path / "silence.wav"
    sf.write(silence, noise_floor(7.0).astype(np.float32), RATE)
    results = []
    for t, digit, k in TYPED_CASES:
        events = tmp_path / "events.json"
        events.write_text(json.dumps([{"time": t, "text": f"say {digit} in {k} s"}]))
        out, _ = stream(tmp_path, silence, "--text-events", str(events))
        heard = decode_dtmf(out)
        results.append((t + k, heard[0][0] if heard else None, heard, digit))
    print("\n".join(map(str, results)))
    assert all(onset is not None for _, onset, _, _ in results), results
    on_time = [abs(onset - due) <= 0.4 for due, onset, _, _ in results]
    assert sum(on_time) >= 2, results
    # And says the typed digit (2 of 3 measured; a guess gets >= 1 of 3 with probability ~0.27, so this
    # only catches a model that never copies it).
    said_right = [ok and heard[0][1] == digit for ok, (_, _, heard, digit) in zip(on_time, results, strict=True)]
    assert sum(said_right) >= 1, results


def test_typed_instructions_over_digital_silence(model_present):
    """Exact zeros, as a synthesiser writes them: 8 random instructions (experiment 002's outside sweep),
    in-process through ``stream_file``, the function ``stream`` runs. Run 7 answered all 8 on time with the
    right digit; run 4, never trained on zeros, 1 of 8 (most got no reply at all)."""
    from flax import linen as nn

    from interaction_jax.serve.engine import load_params
    from interaction_jax.serve.file_mode import stream_file

    config, params = load_params(str(MODEL))
    rng = np.random.default_rng(2026)
    for _ in range(8):  # the sweep draws its DTMF cases first; skip them to reach the same instructions
        "".join(rng.choice(list("0123456789"), int(rng.integers(2, 6))))
        rng.uniform(0.5, 1.2), rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.2), rng.uniform(-22, -9)
    cases = [(float(rng.uniform(0.3, 1.2)), str(rng.integers(10)), int(rng.integers(2, 5))) for _ in range(8)]
    results = []
    for t, digit, k in cases:
        out = stream_file(config, nn.unbox(params), np.zeros(7 * 16_000, np.float32),
                          text_events=[(t, f"say {digit} in {k} s")], progress=False)
        heard = decode_dtmf(out["audio"])
        results.append((t + k, digit, heard[:1]))
    print("\n".join(map(str, results)))
    right = [bool(h) and abs(h[0][0] - due) <= 0.4 and h[0][1] == digit for due, digit, h in results]
    assert sum(right) >= 6, results
