"""``data convert --runner DirectRunner`` (extra beam) writes what the local converter writes, bad files aside."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from interaction_jax.data import synthetic, tools
from interaction_jax.data.episode import read_shard

if not os.environ.get("IJAX_REQUIRE_EXTRAS"):  # CI sets it: there a missing extra fails
    pytest.importorskip("apache_beam", reason="the beam extra is not installed")


def _corpus(root):
    """7 dialogues (one at 48 kHz, one named .Wav) and 3 bad files: mono, corrupt bytes, no word JSON; plus
    things that are not dialogues (a folder named like one, a hidden ".wav", a text file). The folder names
    hold glob characters."""
    audio, words = root / "wav [x]*", root / "words?"
    audio.mkdir()
    words.mkdir()
    (audio / "dir.wav").mkdir()
    (audio / ".wav").write_bytes(b"hidden")
    (audio / "notes.txt").write_text("not audio")
    for i in range(7):
        ep = synthetic.generate(("repeat", "interrupt", "timespeak")[i % 3], 40 + i)
        stereo = np.stack([ep.model_audio, ep.user_audio], 1)
        sr = 16_000
        if i == 3:
            from scipy.signal import resample_poly

            stereo, sr = resample_poly(stereo, 3, 1, axis=0).astype(np.float32), 48_000
        sf.write(audio / (f"d{i}.Wav" if i == 6 else f"d{i}.wav"), stereo, sr, subtype="FLOAT", format="WAV")
        (words / f"d{i}.json").write_text(json.dumps(
            [{"word": w, "start": t, "end": t + 0.1} for t, w in ep.model_words]))
    sf.write(audio / "d2_mono.wav", np.zeros(16_000, np.float32), 16_000)
    (words / "d2_mono.json").write_text("[]")
    (audio / "d4_corrupt.wav").write_bytes(b"RIFF not really a wave file")
    (words / "d4_corrupt.json").write_text("[]")
    (audio / "d5_nowords.wav").write_bytes((audio / "d0.wav").read_bytes())
    return audio, words


def test_beam_pipeline_writes_the_local_converters_shards_and_dead_letters(tmp_path):
    from interaction_jax.data import beam_convert

    audio, words = _corpus(tmp_path)
    local_paths, skipped = tools.convert(audio, words, tmp_path / "local", shard_size=3)
    dead = beam_convert.run(str(audio), str(words), str(tmp_path / "beam"), shard_size=3)
    beam_paths = sorted((tmp_path / "beam").glob("*.array_record"))
    assert [p.name for p in beam_paths] == [p.name for p in local_paths] == [
        "converted-00000.array_record", "converted-00001.array_record", "converted-00002.array_record"]
    for lp, bp in zip(local_paths, beam_paths, strict=True):
        assert read_shard(lp) == read_shard(bp), lp.name  # the same episodes, in the same order
        assert lp.read_bytes() == bp.read_bytes(), lp.name  # the very same file
    assert [e.labels["source"] for p in beam_paths for e in read_shard(p)] == [
        *(f"d{i}.wav" for i in range(6)), "d6.Wav"]
    assert [(d["file"], d["reason"]) for d in dead] == skipped
    assert [d["file"] for d in dead] == ["d2_mono.wav", "d4_corrupt.wav", "d5_nowords.wav"]
    assert "stereo" in dead[0]["reason"] and "unreadable" in dead[1]["reason"] and "missing" in dead[2]["reason"]
    rows = (tmp_path / "beam" / beam_convert.DEAD_LETTER).read_text().splitlines()
    assert [json.loads(r) for r in rows] == dead


def test_beam_cli_and_its_errors(tmp_path, capsys):
    from interaction_jax.__main__ import main

    audio, words = _corpus(tmp_path)
    out = tmp_path / "cli"
    assert main(["data", "convert", "--audio", str(audio), "--words", str(words), "--out", str(out),
                 "--runner", "DirectRunner", "--shard-size", "4", "--beam-arg=--direct_num_workers=1"]) == 0
    assert len(list(out.glob("*.array_record"))) == 2
    assert "dead letter d4_corrupt.wav" in capsys.readouterr().out
    assert main(["data", "convert", "--audio", str(audio), "--words", str(words), "--out", str(out),
                 "--runner", "DirectRunner"]) == 2  # a rerun into the same folder would mix old shards in
    assert "already holds 2 converted shard(s)" in capsys.readouterr().err
    assert main(["data", "convert", "--audio", str(audio), "--words", str(words), "--out", str(tmp_path / "s"),
                 "--runner", "DirectRunner", "--strict"]) == 1
    assert main(["data", "convert", "--audio", str(audio), "--words", str(words), "--out", str(out),
                 "--beam-arg=--project=p"]) == 2
    assert "--beam-arg needs --runner" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    for runner in (["--runner", "DirectRunner"], []):
        assert main(["data", "convert", "--audio", str(empty), "--words", str(words), "--out", str(out),
                     *runner]) == 2
        assert "no .wav or .flac files" in capsys.readouterr().err


def test_frame_folders_are_dead_letters_in_beam_and_crashing_files_never_fail_a_run(tmp_path, monkeypatch):
    from interaction_jax.data import beam_convert

    audio, words = _corpus(tmp_path)
    video = tmp_path / "video"
    (video / "d1").mkdir(parents=True)
    (video / "d1" / "0000.png").write_bytes(b"png")
    real = tools.episode_from_bytes

    def crash_on_d0(name, *args):
        if name == "d0.wav":
            raise RuntimeError("decoder blew up")
        return real(name, *args)

    monkeypatch.setattr(beam_convert, "episode_from_bytes", crash_on_d0)
    dead = beam_convert.run(str(audio), str(words), str(tmp_path / "out"), video_dir=str(video), shard_size=2)
    reasons = {d["file"]: d["reason"] for d in dead}
    assert reasons["d0.wav"] == "RuntimeError: decoder blew up"
    assert reasons["d1.wav"] == "frame folder d1/: the Beam converter reads d1.mp4 only"
    assert len(dead) == 5 and sum(len(read_shard(p)) for p in (tmp_path / "out").glob("*.array_record")) == 5
    manifest = [json.loads(r) for r in (tmp_path / "out" / beam_convert.MANIFEST).read_text().splitlines()]
    assert [os.path.basename(p) for _, p in manifest][:2] == ["d0.wav", "d1.wav"] and len(manifest) == 10
