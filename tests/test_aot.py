"""AOT compilation for a TPU topology on this CPU (needs libtpu: the [tpu] extra, installed by dev.py test)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.tpu

try:
    import libtpu  # noqa: F401

    HAVE_LIBTPU = True
except ImportError:
    HAVE_LIBTPU = False


def aot(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    return subprocess.run([sys.executable, "-m", "interaction_jax", "aot", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install 'interaction_jax[tpu]')")
def test_tiny_compiles_for_two_v5e_slices_train_and_serve_and_fits(tmp_path):
    """Two v5e:2x2 slices over DCN (hybrid mesh, 8 chips): the train step and the serving micro-turn."""
    out = tmp_path / "aot.json"
    r = aot("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--num-slices", "2", "--set", "mesh.data=-1",
            "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    for key in ("topology", "hbm_bytes_per_device", "hbm_capacity_bytes", "fits", "flops_per_step",
                "tokens_per_step", "params_total", "params_active", "attention_kernel", "compile_s"):
        assert key in rep, key
    assert rep["fits"] is True and rep["topology"] == "v5e:2x2" and rep["devices"] == 8 and rep["num_slices"] == 2
    assert rep["headroom_ok"] is True
    assert rep["serve"]["fits"] is True and rep["serve"]["slots"] == 8 and rep["serve"]["hbm_bytes_per_device"] > 0
    assert rep["hbm_bytes_per_device"] < rep["hbm_capacity_bytes"]
    assert rep["attention_kernel"] == "splash" and rep["splash_in_hlo"] is True
    assert rep["flops_per_step"] > 0 and "need" in r.stdout
    # scan-corrected FLOPs (one extra compile with 2 layers per loop iteration) land near the analytic count;
    # splash attention is a custom call XLA does not count, hence the loose lower bound
    assert 1.3 * rep["flops_per_step_raw"] < rep["flops_per_step"]
    assert 0.6 < rep["flops_ratio_vs_analytic"] < 1.5, rep["flops_ratio_vs_analytic"]
    assert rep["flops_corrected"] is True
    # the README's table is printed from such reports
    table = aot("--table", str(out), timeout=120)
    assert table.returncode == 0, table.stderr[-2000:]
    row = table.stdout.strip().splitlines()[-1]
    assert row.startswith("| tiny | v5e:2x2 x2 slices (8) | data 4 |"), row  # data 4 per slice
    assert f"({rep['flops_ratio_vs_analytic']:.2f}x)" in row and "8 sessions x" in row


def test_aot_table_rejects_files_that_are_not_reports(tmp_path, capsys):
    from interaction_jax.__main__ import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["aot", "--table", str(bad)]) == 2
    assert "cannot read aot report" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"config": "tiny"}')
    assert main(["aot", "--table", str(other)]) == 2
    assert "missing topology" in capsys.readouterr().err
    assert main(["aot"]) == 2
    assert "aot needs --config" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install 'interaction_jax[tpu]')")
def test_oversized_config_exits_nonzero_with_advice():
    r = aot("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--set", "mesh.data=-1",
            "--set", "data.batch_size=2048", "--no-flops-correction", "--serve-slots", "0")
    assert r.returncode != 0
    assert "remat" in r.stderr and ("GiB" in r.stderr or "refused" in r.stderr)


def test_unknown_topology_is_a_clear_error():
    from interaction_jax.aot import hbm_capacity

    with pytest.raises(ValueError, match="unknown TPU generation"):
        hbm_capacity("v9x:2x2")


@pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu not installed (pip install 'interaction_jax[tpu]')")
@pytest.mark.parametrize("switches", [
    ("model.audio_in=mel_linear", "model.video_in=linear", "model.audio_out=regress"),
    ("model.audio_in=wave_linear", "model.audio_out=dmel_bins"),
], ids=["mel_linear+linear+regress", "wave_linear+dmel_bins"])
def test_switched_front_ends_compile_for_tpu_train_and_serve(tmp_path, switches):
    """Every non-default front-end variant lowers for a TPU (train step and serving micro-turn) and fits."""
    from tests.small import small_overrides

    out = tmp_path / "aot.json"
    sets = [x for s in small_overrides(2, "mesh.data=-1", *switches) for x in ("--set", s)]
    r = aot("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--no-flops-correction", *sets,
            "--json", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["fits"] is True and rep["serve"]["fits"] is True and rep["flops_per_step"] > 0
