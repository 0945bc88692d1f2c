"""Free-running evaluation and file-mode streaming on a (randomly initialised) checkpoint."""

import json
from pathlib import Path

import jax
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
    batch = run_task(config, params, "repeat", 2, progress=False, row_invariant=True)
    single = run_task(config, params, "repeat", 1, seed=HELD_OUT_SEED + 1, progress=False, row_invariant=True)
    chunks = single["episodes"][0].num_chunks
    np.testing.assert_array_equal(batch["tokens"][1, :chunks], single["tokens"][0, :chunks])
    n = single["episodes"][0].model_audio.size
    np.testing.assert_array_equal(batch["generated"][1, :n], single["generated"][0, :n])
    assert batch["per_episode"][1] == single["per_episode"][0]


def test_epad_timing_error():
    from interaction_jax.evals.teacher_forced import EPAD_ERR_CAP, epad_timing

    pad, epad = tokenizer.PAD, tokenizer.EPAD
    target = np.full((10, 2), pad)
    target[[3, 5], 0] = epad
    pred = np.full((10, 2), pad)
    pred[[3, 7], 0] = epad
    assert epad_timing(pred, target, np.ones(10, bool)) == (2.0, 1.0, 2)  # |3-3| + |5-3| (or 7); one false
    assert epad_timing(np.full((10, 2), pad), target, np.ones(10, bool)) == (2.0 * EPAD_ERR_CAP, 0.0, 2)


def test_batched_eval_matches_row_by_row_in_score(checkpoint):
    """The fast batched path (the default) and the row-invariant one agree on what the model does."""
    workdir, _ = checkpoint
    config, params = load_params(str(workdir))
    fast = run_task(config, params, "interrupt", 2, progress=False)
    exact = run_task(config, params, "interrupt", 2, progress=False, row_invariant=True)
    np.testing.assert_allclose(fast["mel"], exact["mel"], atol=1e-3)
    assert (fast["tokens"] == exact["tokens"]).mean() > 0.99


def test_oracle_scores_the_targets_at_the_ceiling(tmp_path):
    """`eval --oracle`: the episodes' own targets through the engine's vocoder score 1 on every task; the
    noise a rank-deficient head leaves (std 0.6 in these units) scores 0."""
    out = tmp_path / "oracle.json"
    assert main(["eval", "--oracle", "--episodes", "4", "--json", str(out), "--out", str(tmp_path)]) == 0
    clean = json.loads(out.read_text())
    assert clean["repeat"]["content"] == 1.0 and clean["timespeak"]["on_time"] == 1.0
    assert clean["cuespeak"]["on_time"] == 1.0 and clean["repcount"]["obo"] == 1.0
    assert clean["interrupt"]["yield_rate"] == 1.0 and clean["repeat"]["latency_s"] <= 0.4
    # transcripts.jsonl: one line per episode and task; the oracle's text says exactly its targets
    lines = [json.loads(line) for line in (tmp_path / "eval_oracle" / "transcripts.jsonl").read_text().splitlines()]
    assert len(lines) == 5 * 4 and {line["task"] for line in lines} == set(clean)
    repeat = [line for line in lines if line["task"] == "repeat"]
    assert all(line["said"] == line["target"] and len(line["target"]) >= 3 for line in repeat)
    assert all([w for _, w in line["said_words"]] == [w for _, w in line["target_words"]] for line in repeat)
    assert all(line["scores"]["content"] == 1.0 for line in repeat)
    assert main(["eval", "--oracle", "--oracle-noise", "0.6", "--task", "repeat,interrupt", "--episodes", "4",
                 "--json", str(out), "--out", str(tmp_path)]) == 0
    noisy = json.loads(out.read_text())
    assert noisy["repeat"]["content"] == 0.0 and noisy["interrupt"]["yield_rate"] == 0.0


def test_teacher_forced_metrics_per_task(checkpoint, tmp_path, capsys):
    workdir, _ = checkpoint
    out = tmp_path / "tf.json"
    assert main(["eval", "--checkpoint", str(workdir), "--teacher-forced", "--task", "repeat,interrupt",
                 "--episodes", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for task in ("repeat", "interrupt"):
        assert {"word_acc", "epad_acc", "epad_timing_err_chunks", "flow_loss_voiced", "flow_loss_silent",
                "text_floor", "text_loss_above_floor", "mel_l1_voiced", "mel_l1_silent"} <= set(res[task])
        assert res[task]["mel_l1_silent"] >= 0.0
        assert res[task]["text_loss_above_floor"] == res[task]["text_loss"] - res[task]["text_floor"]
        assert 0.0 <= res[task]["word_acc_pos0"] <= 1.0
    assert {f"word_acc_pos{i}" for i in range(3)} <= set(res["interrupt"])  # it says 1, 2, 3 before any barge-in
    assert 0.0 <= res["repeat"]["stop_acc"] <= 1.0
    assert "epad_timing_err_chunks" in capsys.readouterr().out


def test_eval_flags_are_checked(capsys, checkpoint):
    workdir, _ = checkpoint
    assert main(["eval", "--oracle", "--teacher-forced"]) == 2
    assert "cannot be --teacher-forced" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(workdir), "--oracle-noise", "0.1"]) == 2
    assert "needs --oracle" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(workdir), "--task", "dance"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err


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


def test_export_is_a_params_only_model_that_streams(checkpoint, tmp_path, capsys):
    """`export` writes params.npz + config.json; stream/eval accept the folder and give the same outputs."""
    workdir, _ = checkpoint
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(workdir), "--out", str(out), "--dtype", "float32"]) == 0
    assert "params.npz" in capsys.readouterr().out
    config, params = load_params(str(workdir))
    config2, params2 = load_params(str(out))
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    exact = run_task(config, params, "repeat", 1, progress=False, row_invariant=True)
    again = run_task(config2, params2, "repeat", 1, progress=False, row_invariant=True)
    np.testing.assert_array_equal(exact["tokens"], again["tokens"])
    # a corrupt or mismatched export is a clear error
    (out / "params.npz").write_bytes(b"junk")
    assert main(["eval", "--checkpoint", str(out), "--task", "repeat", "--episodes", "1"]) == 2
    assert "not a readable params export" in capsys.readouterr().err
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    flat["tick_embed"] = flat["tick_embed"][:-1]  # one parameter of the wrong shape
    np.savez(out / "params.npz", **flat)
    assert main(["eval", "--checkpoint", str(out), "--task", "repeat", "--episodes", "1"]) == 2
    assert "different model; first mismatch: ['tick_embed']" in capsys.readouterr().err


def test_stop_hit_scores_the_slot_after_the_last_word():
    """A reply that stops after its last word hits; one that starts another word (EPAD) misses; an episode
    that ends on its last word, or has none, is not scored."""
    from interaction_jax.evals.teacher_forced import stop_hit
    from interaction_jax.text import tokenizer

    P, E = tokenizer.PAD, tokenizer.EPAD
    target = np.array([P, P, E, ord("4"), E, ord("2"), P, P])
    valid = np.ones(8, bool)
    assert stop_hit(target.copy(), target, valid) == [True]
    goes_on = target.copy()
    goes_on[6] = E
    assert stop_hit(goes_on, target, valid) == [False]
    assert stop_hit(target[:6], target[:6], valid[:6]) == []
    assert stop_hit(np.full(4, P), np.full(4, P), np.ones(4, bool)) == []
    valid[6:] = False  # padding after the episode is not a stop
    assert stop_hit(goes_on, target, valid) == []
