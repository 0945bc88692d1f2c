"""CLI commands that are cheap to run in-process: params, data synth/show, demo-frontends, bench dmel keys."""

import json
from pathlib import Path

import pytest

from interaction_jax.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("config", "low", "high"),
    [("tiny", 5e6, 9e6), ("small", 80e6, 130e6), ("tpu_v5e_1b", 1.3e9, 1.8e9), ("tpu_v6e_1b", 1.3e9, 1.8e9),
     ("tpu_v5p_moe", 8e9, 12e9), ("tml_small_scale", 260e9, 290e9)],
)
def test_params_report(tmp_path, config, low, high):
    out = tmp_path / "p.json"
    assert main(["params", "--config", str(ROOT / f"configs/{config}.py"), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert {"total", "active", "flops_per_token", "components"} <= set(rep)
    assert low <= rep["total"] <= high, rep["total"]
    assert sum(rep["components"].values()) == rep["total"]
    if config == "tpu_v5p_moe":
        assert 0.7e9 <= rep["active"] <= 1.5e9, rep["active"]
    elif config == "tml_small_scale":
        assert 10e9 <= rep["active"] <= 14e9, rep["active"]
    else:
        assert rep["active"] == rep["total"]
    assert rep["flops_per_token"] > 6 * rep["active"] * 0.5


def test_data_synth_and_show(tmp_path):
    assert main(["data", "synth", "--task", "repcount", "--num", "3", "--out", str(tmp_path), "--shard-size", "2"]) == 0
    shards = sorted(tmp_path.glob("*.array_record"))
    assert len(shards) == 2
    png = tmp_path / "show.png"
    assert main(["data", "show", str(shards[0]), "--index", "1", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_data_synth_unknown_task_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "synth", "--task", "juggle", "--num", "1", "--out", str(tmp_path)]) == 2
    assert "error: unknown task 'juggle'" in capsys.readouterr().err  # one line, no traceback


def test_demo_frontends_writes_its_files(tmp_path):
    assert main(["demo-frontends", "--out", str(tmp_path)]) == 0
    for name in ("logmel_vs_dmel.png", "dmel_griffin_lim.wav", "hmlp_token_norms.png"):
        assert (tmp_path / name).stat().st_size > 1000, name


def test_bench_dmel_json_keys(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "dmel", "--seconds", "3", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["max_abs_diff"] < 1e-4 and rep["speedup_vs_librosa"] > 0


def test_curves_plots_metrics_and_rejects_bad_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "loss": 3.0 / s, "text_loss": 1.0, "flow_loss": 1.0, "text_out_acc_word": 0.1}
            for s in (1, 2, 3)]
    rows.append({"step": 2, "loss": 9.0})  # a resumed run re-logs step 2: the last one wins
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "curve.png"
    assert main(["curves", str(run), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000 and "3 logged steps" in capsys.readouterr().out
    from interaction_jax.evals.curves import read_metrics

    assert [r["loss"] for r in read_metrics(run)] == [3.0, 9.0, 1.0]
    # periodic evals log their own rows at a train step: merged, and drawn as per-task score panels
    evals = [{"step": s, "eval/repeat/content": s / 4, "eval/repeat/latency_s": 0.3, "tf/repeat/word_acc": s / 3}
             for s in (2, 3)]
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n".join(json.dumps(r) for r in evals) + "\n")
    merged = read_metrics(run)
    assert merged[1]["loss"] == 9.0 and merged[1]["eval/repeat/content"] == 0.5
    from interaction_jax.evals.curves import task_series

    assert task_series(merged, "eval")["eval/repeat/content"] == ([2, 3], [0.5, 0.75])
    wide = tmp_path / "wide.png"
    assert main(["curves", str(run), "--out", str(wide)]) == 0
    from PIL import Image

    assert Image.open(wide).size[0] > Image.open(out).size[0]  # two more panels
    # the final evaluation (eval/results.json, written after the last step) ends the score curves
    final = tmp_path / "final"
    (final / "eval").mkdir(parents=True)
    (final / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    (final / "eval" / "results.json").write_text(json.dumps({"repeat": {"content": 1.0, "voice_match": 0.5}}))
    merged = read_metrics(final)
    assert merged[-1]["step"] == 3 and merged[-1]["eval/repeat/content"] == 1.0
    assert task_series(merged, "eval")["eval/repeat/voice_match"] == ([3], [0.5])
    (final / "eval" / "results.json").write_text("{oops")
    assert main(["curves", str(final), "--out", str(out)]) == 2
    assert "results.json: not JSON" in capsys.readouterr().err
    (run / "metrics.jsonl").write_text('{"step": 1}\n{not json\n')
    assert main(["curves", str(run), "--out", str(out)]) == 2
    assert "metrics.jsonl:2: not a JSON line" in capsys.readouterr().err
    assert main(["curves", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_quickstart_goal_table_shows_score_goal_and_voice_match():
    from interaction_jax.demo import goal_table

    table = goal_table({"repeat": {"content": 1.0, "latency_s": 0.3, "voice_match": 0.5},
                        "interrupt": {"yield_rate": 0.25}})
    assert "| repeat | content | 1.00 | >= 0.5 | >= 0.9 | 0.50 |" in table
    assert "| repeat | latency_s | 0.30 |  | <= 0.4 | 0.50 |" in table
    assert "| interrupt | yield_rate | 0.25 | >= 0.5 | >= 0.9 | nan |" in table
    assert "timespeak" not in table  # tasks that were not evaluated are left out


def test_quickstart_overrides_resolve_to_the_two_task_recipe():
    """The quickstart's --set list must load on tiny (a renamed field fails here, not 10 minutes into a run)."""
    from interaction_jax.config import load_config
    from interaction_jax.demo import QUICKSTART_GOALS, QUICKSTART_OVERRIDES, QUICKSTART_STEPS

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.py", QUICKSTART_OVERRIDES)
    assert cfg.data.tasks == ("repeat", "interrupt") and cfg.data.task_weights == (3.0, 1.0)
    assert cfg.train.steps == QUICKSTART_STEPS and cfg.model.heard_prev_weight > 0
    assert {task for task, _ in QUICKSTART_GOALS} <= set(cfg.data.tasks)  # every goal is on a trained task
