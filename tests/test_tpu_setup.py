"""tpu_setup/ scripts against a fake gcloud that records its calls (no cloud access needed)."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "tpu_setup"


@pytest.fixture
def fake_gcloud(tmp_path):
    """A `gcloud` on PATH that appends its argv (one line, shell-quoted) to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    state = tmp_path / "state"
    state.write_text("ACTIVE\n")
    script = bin_dir / "gcloud"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%q " "$@" >> {log}; echo >> {log}\n'
        f'if [[ "$*" == *"queued-resources describe"* ]]; then head -n1 {state}; '
        f'tail -n +2 {state} > {state}.tmp; if [[ -s {state}.tmp ]]; then mv {state}.tmp {state}; fi; fi\n'
    )
    script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, log, state


def run(script, args, env, cwd):
    return subprocess.run(["bash", str(SETUP / script), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def calls(log):
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(("tpu_type", "runtime"), [("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                    ("v5p-64", "v2-alpha-tpuv5"), ("v6e-16", "v2-alpha-tpuv6e")])
def test_create_uses_queued_resources_and_runtime(fake_gcloud, tmp_path, tpu_type, runtime):
    env, log, _ = fake_gcloud
    r = run("create.sh", ["--name", "ij", "--zone", "us-east5-a", "--type", tpu_type, "--project", "p1"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    (argv,) = calls(log)
    assert argv[:5] == ["compute", "tpus", "queued-resources", "create", "ij"]
    assert "--zone=us-east5-a" in argv and f"--accelerator-type={tpu_type}" in argv
    assert f"--runtime-version={runtime}" in argv and "--spot" in argv and "--project=p1" in argv


def test_create_on_demand_and_bad_type(fake_gcloud, tmp_path):
    env, log, _ = fake_gcloud
    r = run("create.sh", ["--name", "ij", "--zone", "z", "--type", "v5p-8", "--on-demand"], env, tmp_path)
    assert r.returncode == 0 and "--spot" not in calls(log)[0]
    bad = run("create.sh", ["--name", "ij", "--zone", "z", "--type", "tpu-9000"], env, tmp_path)
    assert bad.returncode != 0 and "unknown accelerator type" in bad.stderr


def test_missing_required_flag(fake_gcloud, tmp_path):
    env, log, _ = fake_gcloud
    r = run("create.sh", ["--name", "ij", "--type", "v5p-8"], env, tmp_path)
    assert r.returncode == 2 and "--zone is required" in r.stderr and not calls(log)


def test_dry_run_prints_and_calls_nothing(fake_gcloud, tmp_path):
    env, log, _ = fake_gcloud
    r = run("launch.sh", ["--name", "ij", "--zone", "z", "--config", "configs/tpu_v5e_1b.py", "--workdir",
                          "gs://b/run", "--dry-run"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not calls(log)
    assert r.stdout.count("+ gcloud compute tpus tpu-vm ssh ij") == 2


def test_bootstrap_and_launch_fan_out_same_command_to_all_workers(fake_gcloud, tmp_path):
    env, log, _ = fake_gcloud
    assert run("bootstrap.sh", ["--name", "ij", "--zone", "z", "--compile-cache", "gs://b/cache"], env,
               tmp_path).returncode == 0
    assert run("launch.sh", ["--name", "ij", "--zone", "z", "--config", "configs/tpu_v5e_1b.py", "--workdir",
                             "gs://b/run", "--", "--set", "train.steps=10"], env, tmp_path).returncode == 0
    recorded = calls(log)
    assert all(a[:5] == ["compute", "tpus", "tpu-vm", "ssh", "ij"] and "--worker=all" in a and "--zone=z" in a
               for a in recorded)
    boot = next(a for a in recorded if any("pip install" in x for x in a))
    assert any("interaction_jax[tpu,gcs]" in x and "JAX_COMPILATION_CACHE_DIR" in x and "gs://b/cache" in x
               for x in boot)
    launch = [x for a in recorded for x in a if "interaction_jax train" in x]
    assert len(launch) == 1
    assert "--config configs/tpu_v5e_1b.py --workdir gs://b/run" in launch[0]
    assert "train.distributed=true" in launch[0] and "train.steps=10" in launch[0]


def test_babysit_recreates_after_preemption(fake_gcloud, tmp_path):
    env, log, state = fake_gcloud
    state.write_text("SUSPENDED\nACTIVE\n")
    r = run("babysit.sh", ["--name", "ij", "--zone", "z", "--type", "v5p-64", "--config", "c.py", "--workdir",
                           "gs://b/run", "--once"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    verbs = [" ".join(a[:4]) for a in calls(log)]
    order = [v for v in verbs if v != "compute tpus queued-resources describe"]
    assert order[0] == "compute tpus queued-resources delete"
    assert order[1] == "compute tpus queued-resources create"
    assert order[2:] == ["compute tpus tpu-vm ssh"] * 3  # bootstrap, launch, log tail
    assert "recreating" in r.stdout


def test_babysit_leaves_healthy_slice_alone(fake_gcloud, tmp_path):
    env, log, _ = fake_gcloud
    r = run("babysit.sh", ["--name", "ij", "--zone", "z", "--type", "v5p-64", "--config", "c.py", "--workdir",
                           "gs://b/run", "--once"], env, tmp_path)
    assert r.returncode == 0
    assert [a[3] for a in calls(log)] == ["describe"]
