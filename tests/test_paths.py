"""Remote-safe paths: gs:// survives path joins, and growing files are staged locally then mirrored."""

import json

from interaction_jax import paths
from interaction_jax.train import MetricsWriter


def test_gs_paths_keep_their_scheme():
    run = paths.as_path("gs://bucket/runs/001")
    assert str(run / "checkpoints") == "gs://bucket/runs/001/checkpoints"
    assert paths.is_remote("gs://bucket/x") and not paths.is_remote("runs/x")


def test_local_glob_is_sorted(tmp_path):
    for name in ("b.array_record", "a.array_record", "c.txt"):
        (tmp_path / name).write_text("x")
    assert [p.rsplit("/", 1)[1] for p in paths.glob(str(tmp_path / "*.array_record"))] == [
        "a.array_record", "b.array_record"]


def test_mirror_stages_locally_seeds_history_and_syncs(tmp_path):
    remote = tmp_path / "bucket" / "run"
    remote.mkdir(parents=True)
    (remote / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    writer = MetricsWriter.__new__(MetricsWriter)
    mirror = paths.Mirror(remote, remote=True)  # a local directory standing in for gs://
    assert mirror.local != remote and (mirror.local / "metrics.jsonl").exists()  # resumed history seeded
    from tensorboardX import SummaryWriter

    writer.enabled, writer.mirror = True, mirror
    writer.jsonl = open(mirror.local / "metrics.jsonl", "a")  # noqa: SIM115
    writer.tb = SummaryWriter(str(mirror.local / "tb"))
    writer.write(2, {"loss": 1.5})
    assert len((remote / "metrics.jsonl").read_text().splitlines()) == 1  # not synced yet
    writer.sync()
    lines = (remote / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert any((remote / "tb").iterdir())
    staging = mirror.local
    writer.close()
    assert not staging.exists()


def test_local_workdir_is_written_in_place(tmp_path):
    writer = MetricsWriter(tmp_path / "run", enabled=True)
    writer.write(1, {"loss": 3.0})
    writer.close()
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["loss"] == 3.0
