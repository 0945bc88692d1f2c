"""Free-running evaluation and file-mode streaming on a (randomly initialised) checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from interaction_jax import sharding
from interaction_jax.__main__ import main
from interaction_jax.checkpoint import Checkpointer
from interaction_jax.config import MeshConfig, load_config
from interaction_jax.data import synthetic
from interaction_jax.evals.run import HELD_OUT_SEED, evaluate, json_safe, run_task, text_events
from interaction_jax.serve.engine import load_params
from interaction_jax.text import tokenizer
from interaction_jax.train import Trainer
from tests.small import small_overrides

ROOT = Path(__file__).resolve().parents[2]
SMALL = small_overrides(1, "model.max_chunks=200")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, devices):
    config = load_config(ROOT / "configs/tiny.py", [*SMALL, "mesh.data=1"])
    trainer = Trainer(config, sharding.make_mesh(MeshConfig(data=1), devices[:1]))
    workdir = tmp_path_factory.mktemp("ckpt")
    ckpt = Checkpointer(workdir / "checkpoints", async_save=False)
    ckpt.write_config(config)
    ckpt.save(1, trainer.init_state(), force=True)
    ckpt.close()
    return workdir, config


def test_text_events_group_tokens_into_words():
    tokens = np.array([[tokenizer.PAD, tokenizer.EPAD], [ord("4"), ord("2")], [tokenizer.PAD, ord("7")]])
    assert text_events(tokens) == [(0.4, "42"), (0.6, "7")]


def test_evaluate_writes_documented_metrics(checkpoint, tmp_path):
    workdir, _ = checkpoint
    config, params = load_params(str(workdir))
    results = evaluate(config, params, ("repeat", "interrupt"), 2, tmp_path, progress=False)
    assert {"content", "latency_s"} <= set(results["repeat"])
    assert {"yield_rate", "yield_latency_s"} <= set(results["interrupt"])
    assert 0.0 <= results["repeat"]["content"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text()) == json_safe(results)
    assert (tmp_path / "repeat_example.wav").exists() and (tmp_path / "interrupt_mel.png").exists()
    wave, sr = sf.read(tmp_path / "repeat_example.wav")
    assert sr == 16000 and wave.shape[1] == 2


def test_stream_task_scores_the_same_as_eval(checkpoint):
    workdir, _ = checkpoint
    config, params = load_params(str(workdir))
    batch = run_task(config, params, "repeat", 2, progress=False)
    single = run_task(config, params, "repeat", 1, seed=HELD_OUT_SEED + 1, progress=False)
    chunks = single["episodes"][0].num_chunks
    np.testing.assert_array_equal(batch["tokens"][1, :chunks], single["tokens"][0, :chunks])
    n = single["episodes"][0].model_audio.size
    np.testing.assert_array_equal(batch["generated"][1, :n], single["generated"][0, :n])
    assert batch["per_episode"][1] == single["per_episode"][0]


def test_cli_eval_json(checkpoint, tmp_path):
    workdir, _ = checkpoint
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(workdir), "--task", "cuespeak", "--episodes", "1", "--json", str(out),
                 "--out", str(tmp_path)]) == 0
    assert "on_time" in json.loads(out.read_text())["cuespeak"]


def test_file_mode_writes_aligned_audio_and_transcript(checkpoint, tmp_path, capsys):
    workdir, _ = checkpoint
    ep = synthetic.generate("repeat", 4)
    wav = tmp_path / "in.wav"
    sf.write(wav, ep.user_audio, 16000)
    out = tmp_path / "out.wav"
    events = tmp_path / "ev.json"
    events.write_text(json.dumps([{"time": 0.5, "text": "hello"}]))
    assert main(["stream", "--checkpoint", str(workdir), "--audio", str(wav), "--text-events", str(events),
                 "--out", str(out)]) == 0
    wave, sr = sf.read(out)
    assert sr == 16000 and wave.size == ep.user_audio.size
    assert isinstance(json.loads(out.with_suffix(".json").read_text()), list)
    # other sample rates are resampled, and say so
    sf.write(tmp_path / "in48.wav", np.zeros(48000, np.float32), 48000)
    assert main(["stream", "--checkpoint", str(workdir), "--audio", str(tmp_path / "in48.wav"),
                 "--out", str(tmp_path / "o2.wav")]) == 0
    assert "resampling" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "needle"),
    [("nan", "NaN"), ("garbage", "cannot read audio"), ("empty", "no samples")],
)
def test_file_mode_bad_audio_is_a_clear_error(checkpoint, tmp_path, capsys, content, needle):
    workdir, _ = checkpoint
    wav = tmp_path / "bad.wav"
    if content == "nan":
        sf.write(wav, np.full(3200, np.nan, np.float32), 16000, subtype="FLOAT")
    elif content == "empty":
        sf.write(wav, np.zeros(0, np.float32), 16000)
    else:
        wav.write_bytes(b"RIFF not really a wav")
    assert main(["stream", "--checkpoint", str(workdir), "--audio", str(wav), "--out", str(tmp_path / "o.wav")]) == 2
    assert needle in capsys.readouterr().err


def test_missing_or_mismatched_checkpoint(tmp_path, capsys, checkpoint):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    workdir, _config = checkpoint
    assert main(["train", "--config", str(ROOT / "configs/tiny.py"), "--workdir", str(workdir),
                 *[a for s in [*SMALL, "model.transformer.d_model=32"] for a in ("--set", s)]]) == 2
    assert "different model config" in capsys.readouterr().err
