"""``data convert --runner ...``: the dialogue converter as an Apache Beam pipeline (extra ``[beam]``).

The same conversion as ``tools.convert`` (stereo WAV/FLAC, left = model, right = user, plus ``<stem>.json``
word timestamps and an optional ``<stem>.mp4``), for corpora that one machine cannot convert in reasonable
time: DirectRunner locally, DataflowRunner (or any runner) against ``gs://`` buckets. Files are read with
Beam's filesystems, so any scheme Beam knows works for input and output.

**Deterministic output.** Dialogues are numbered in name order when the pipeline is built; a converted
episode's rank among the successes decides its shard (``rank // shard_size``) and its place in it, so the
pipeline writes the same episodes in the same shards, under the same names, as the local converter
(tested). Only the successful indices (integers) travel as a side input, never the audio.

**Bad files do not fail the run.** Each one goes to ``dead_letter.jsonl`` in the output folder with the
reason (``{"file", "reason"}``), as the local converter lists its skipped files. Frame folders
(``<stem>/``, a local convenience) are not read here: such a file is a dead letter, so that the two
converters never write different episodes for it.

The numbered file list is written to ``inputs.jsonl`` in the output folder and read back by the pipeline.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from interaction_jax.data.tools import (
    InputError,
    check_output,
    chunks_of,
    episode_from_bytes,
    failure_reason,
    is_dialogue,
    shard_name,
    unreadable,
)

DEAD_LETTER = "dead_letter.jsonl"
MANIFEST = "inputs.jsonl"


def _beam():
    from interaction_jax.data.extras import require

    return require("apache_beam", "beam", "data convert --runner")


def _join(folder: str, name: str) -> str:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(folder, name)


def _read(path: str) -> bytes | None:
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def _listing(folder: str) -> list[str]:
    """The files directly in ``folder``. Local folders are listed by the OS: Beam's match patterns cannot
    quote glob characters, and a local folder name may hold them. Object stores are matched with ``*``."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in folder:
        if not os.path.isdir(folder):
            return []
        return sorted(p for n in os.listdir(folder) if os.path.isfile(p := os.path.join(folder, n)))
    if any(c in folder for c in "*?[]"):
        raise InputError(f"{folder}: glob characters in a remote folder name cannot be matched by Beam")
    return [m.path for m in FileSystems.match([_join(folder, "*")])[0].metadata_list]


def list_inputs(audio_dir: str) -> list[str]:
    """Audio files in ``audio_dir`` (any Beam filesystem), chosen and ordered as ``tools.list_dialogues``."""
    files = sorted((f for f in _listing(audio_dir) if is_dialogue(os.path.basename(f))), key=os.path.basename)
    if not files:
        raise InputError(f"{audio_dir}: no .wav or .flac files")
    return files


def _frames_from_mp4(data: bytes, name: str, num_chunks: int):
    from interaction_jax.data.extras import require
    from interaction_jax.serve.file_mode import read_video

    av = require("av", "video", "reading <stem>.mp4")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            with av.open(tmp.name) as c:
                if not c.streams.video:
                    raise ValueError(f"{name}: no video stream")
                h, w = c.streams.video[0].height, c.streams.video[0].width
            return read_video(tmp.name, h, w, num_chunks)
        except ValueError as e:
            raise ValueError(str(e).replace(tmp.name, name)) from e


def convert_element(item: tuple, words_dir: str, video_dir: str | None) -> tuple[int, Any]:
    """(index, audio path) -> (index, episode bytes), or (index, (name, reason)) for a file that fails."""
    import io

    import soundfile as sf

    from interaction_jax.data.episode import to_bytes

    index, path = item
    name = os.path.basename(path)
    stem = name.rsplit(".", 1)[0]
    try:
        audio = _read(path)
        if audio is None:
            raise ValueError("audio file vanished")
        frames = None
        if video_dir:
            if _listing(_join(video_dir, stem)):
                raise ValueError(f"frame folder {stem}/: the Beam converter reads {stem}.mp4 only")
            mp4 = _read(_join(video_dir, f"{stem}.mp4"))
            if mp4 is not None:
                try:
                    info = sf.info(io.BytesIO(audio))
                except Exception as e:
                    raise unreadable(e) from e
                frames = _frames_from_mp4(mp4, f"{stem}.mp4", chunks_of(info.frames, info.samplerate))
        ep = episode_from_bytes(name, audio, _read(_join(words_dir, f"{stem}.json")), frames)
        return index, to_bytes(ep)
    except Exception as e:  # a bad file goes to the dead letters, never fails the run
        return index, (name, failure_reason(e))


def _write_shard(item: tuple, out_dir: str) -> str:
    """Write one shard (its episodes in rank order) locally, then copy it to ``out_dir`` (any filesystem)."""
    from apache_beam.io.filesystems import FileSystems

    from interaction_jax.data.episode import from_bytes, write_shard

    shard, members = item
    episodes = [from_bytes(data) for _, data in sorted(members, key=lambda m: m[0])]
    dest = _join(out_dir, shard_name(shard))
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, shard_name(shard))
        write_shard(local, episodes)
        with open(local, "rb") as src, FileSystems.create(dest) as dst:
            dst.write(src.read())
    return dest


def write_manifest(inputs: Sequence[str], out_dir: str) -> str:
    """``<out>/inputs.jsonl``: one ``[index, path]`` per input. The pipeline reads the file list from it, so a
    corpus of millions of files does not travel inside the job graph (Dataflow caps its size)."""
    from apache_beam.io.filesystems import FileSystems

    path = _join(out_dir, MANIFEST)
    with FileSystems.create(path) as f:
        f.write("".join(json.dumps([i, p]) + "\n" for i, p in enumerate(inputs)).encode())
    return path


def build(pipeline, manifest: str, words_dir: str, out_dir: str, *, video_dir: str | None = None,
          shard_size: int = 64) -> None:
    """Add the conversion of the files listed in ``manifest`` to ``pipeline``: converted shards and
    ``dead_letter.jsonl`` under ``out_dir``."""
    beam = _beam()
    inputs = (beam.io.ReadFromText(manifest) | "Parse" >> beam.Map(lambda line: tuple(json.loads(line))))
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    results = (pipeline
               | "Index" >> inputs
               | "Reshuffle" >> beam.Reshuffle()  # spread the conversions over workers
               | "Convert" >> beam.Map(convert_element, words_dir, video_dir))
    ok = results | "Ok" >> beam.Filter(lambda r: isinstance(r[1], bytes))
    bad = results | "Bad" >> beam.Filter(lambda r: not isinstance(r[1], bytes))
    ranks = (ok | "Indices" >> beam.Map(lambda r: r[0])
             | "AllIndices" >> beam.combiners.ToList()
             | "Ranks" >> beam.Map(lambda idx: {i: rank for rank, i in enumerate(sorted(idx))}))
    (ok
     | "ToShard" >> beam.Map(lambda r, rk: (rk[r[0]] // shard_size, (rk[r[0]], r[1])), beam.pvalue.AsSingleton(ranks))
     | "GroupShards" >> beam.GroupByKey()
     | "WriteShards" >> beam.Map(_write_shard, out_dir))
    (bad
     | "DeadLetters" >> beam.Map(lambda r: (r[0], json.dumps({"file": r[1][0], "reason": r[1][1]})))
     | "AllDead" >> beam.combiners.ToList()
     | "WriteDead" >> beam.Map(_write_dead_letters, out_dir))


def _write_dead_letters(rows: list[tuple[int, str]], out_dir: str) -> None:
    """One ``dead_letter.jsonl`` in input order (empty when every file converted)."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(_join(out_dir, DEAD_LETTER)) as f:
        f.write("".join(line + "\n" for _, line in sorted(rows)).encode())


def run(audio_dir: str, words_dir: str, out_dir: str, *, video_dir: str | None = None, shard_size: int = 64,
        runner: str = "DirectRunner", pipeline_args: Sequence[str] = ()) -> list[dict[str, str]]:
    """Run the conversion on ``runner``; returns the dead-letter rows (also written to the output folder).

    ``pipeline_args`` are Beam's own options (``--project``, ``--region``, ``--temp_location``, ...).
    """
    beam = _beam()
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    inputs = list_inputs(audio_dir)
    if FileSystems.exists(out_dir):
        check_output([os.path.basename(f) for f in _listing(out_dir)], out_dir)
    else:
        FileSystems.mkdirs(out_dir)
    manifest = write_manifest(inputs, out_dir)
    print(f"[data] converting {len(inputs)} files on {runner} into {out_dir}", flush=True)
    options = PipelineOptions([f"--runner={runner}", *pipeline_args])
    with beam.Pipeline(options=options) as p:
        build(p, manifest, words_dir, out_dir, video_dir=video_dir, shard_size=shard_size)
    dead = [json.loads(line) for line in (_read(_join(out_dir, DEAD_LETTER)) or b"").decode().splitlines() if line]
    print(f"[data] converted {len(inputs) - len(dead)} of {len(inputs)} files; "
          f"{len(dead)} in {_join(out_dir, DEAD_LETTER)}", flush=True)
    for row in dead:
        print(f"[data] dead letter {row['file']}: {row['reason']}")
    return dead
