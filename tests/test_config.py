"""Config loading, overrides with type checking, and round trips through the saved JSON form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from interaction_jax.config import Config, ConfigError, apply_overrides, dumps, flatten, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.py"))  # configs/ablations/ too


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_documents_itself(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem
    text = path.read_text()
    doc = text.split('"""')[1]
    assert "python -m interaction_jax" in doc, f"{path.name}: docstring must give the command"
    assert "Expected" in doc, f"{path.name}: docstring must give the expected result"


def test_override_nested_values_with_types():
    cfg = load_config(ROOT / "configs/tiny.py", ["model.transformer.num_layers=2", "train.learning_rate=1e-4",
                                                  "model.transformer.remat=full", "data.tasks=repeat,interrupt",
                                                  "train.distributed=true"])
    assert cfg.model.transformer.num_layers == 2
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.model.transformer.remat == "full"
    assert cfg.data.tasks == ("repeat", "interrupt")
    assert cfg.train.distributed is True


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.transformer.num_layerz=2", "valid keys: "),
        ("model.transformer.num_layers=two", "expected a value of type int"),
        ("model.transformer.remat=sometimes", "must be one of none, dots, full"),
        ("train.distributed=maybe", "expected a value of type bool"),
        ("model=3", "is a section"),
        ("nosuch.key=1", "valid keys: "),
        ("model.transformer.d_model", "must look like"),
    ],
)
def test_bad_overrides_name_the_valid_choices(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        apply_overrides(Config(), [override])


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), ["train.stepz=3"])
    assert "steps" in str(err.value) and "learning_rate" in str(err.value)


def test_json_round_trip_and_flatten():
    cfg = load_config(ROOT / "configs/tpu_v5p_moe.py")
    again = from_dict(json.loads(dumps(cfg)))
    assert again == cfg
    flat = flatten(cfg)
    assert flat["model.transformer.moe.num_experts"] == 64


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict({"nam": "x"})


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/nope.py")


def test_cli_prints_resolved_config():
    out = subprocess.run(
        [sys.executable, "-m", "interaction_jax", "config", "--config", "configs/tiny.py",
         "--set", "model.transformer.num_layers=3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert json.loads(out.stdout)["model"]["transformer"]["num_layers"] == 3
    bad = subprocess.run(
        [sys.executable, "-m", "interaction_jax", "config", "--config", "configs/tiny.py", "--set", "x.y=1"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert bad.returncode == 2 and "valid keys" in bad.stderr


EXPERIMENTS = sorted((ROOT / "experiments").glob("*/config.py"))
# Decode-kernel choices: flash, dense and auto, at any block size, give the same attention (<= 1e-5, tested in
# tests/layers/test_layers_attention.py and tests/serve/test_engine.py), so changing their defaults (session
# 12: tiles 256 -> sized by the batch, auto reads only small caches densely) does not change what an
# experiment's command trains or measures.
EXACT_KERNEL_FIELDS = ("model.transformer.decode_attention", "model.transformer.decode_block")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.parent.name)
def test_every_experiment_config_reproduces_the_config_its_results_came_from(path):
    """An experiment's results were made by the resolved ``config.json`` beside them; its ``config.py`` must
    still resolve to exactly that, so a change to an inherited default (``configs/tiny.py``) cannot silently
    make the folder's command run something other than what its tables report."""
    cfg = load_config(path)
    doc = path.read_text().split('"""')[1]
    assert "python -m interaction_jax train --config " + str(path.relative_to(ROOT)) in doc
    assert "Expected" in doc
    got, saved = flatten(cfg), flatten(from_dict(json.loads((path.parent / "config.json").read_text())))
    for key in EXACT_KERNEL_FIELDS:  # which exact decode kernel reads the cache is not part of the experiment
        got.pop(key), saved.pop(key)
    assert got == saved, {k: (v, saved.get(k)) for k, v in got.items() if saved.get(k) != v}
