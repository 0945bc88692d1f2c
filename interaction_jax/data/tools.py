"""Data commands: synthesize shards, convert your own dialogues, and draw an episode.

    python -m interaction_jax data synth --task repeat --num 1000 --out data/repeat
    python -m interaction_jax data convert --audio wavs/ --words words/ [--video vids/] --out data/mine
    python -m interaction_jax data show data/repeat/repeat-00000.array_record --index 0 --out ep.png

``convert`` takes stereo WAV (left = model, right = user) plus ``<stem>.json`` word timestamps
(``[{"word", "start", "end"}]``, the moshi-finetune convention) and optionally ``<stem>.mp4`` or a folder
``<stem>/`` of frame images at 5 fps. Other sample rates are resampled explicitly (and said so). Files that
cannot be converted are skipped and listed with the reason; nothing is skipped silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

import numpy as np

from interaction_jax.data.episode import CHUNK_SAMPLES, Episode, read_record, validate, write_shard

SR = 16_000


def _progress(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return bar, bar.add_task(label, total=total)


def synth(task: str, num: int, out: str | Path, *, seed: int = 0, shard_size: int = 256, voice: str = "dtmf",
          echo: bool = True) -> list[Path]:
    """Generate ``num`` episodes of ``task`` (seeds seed..seed+num-1) into ArrayRecord shards."""
    from interaction_jax.data import synthetic

    if task not in synthetic.TASKS:
        raise synthetic.TaskError(f"unknown task {task!r}; available: {', '.join(synthetic.TASKS)}")
    try:
        synthetic.tasks.get_voices(voice)  # registers an extra's family; fails early on an unknown name
    except ValueError as e:
        raise synthetic.TaskError(str(e)) from e
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, batch = [], []
    bar, job = _progress(num, f"synth {task}")
    with bar:
        for i in range(num):
            batch.append(synthetic.generate(task, seed + i, voice=voice, echo=echo))
            bar.advance(job)
            if len(batch) == shard_size or i == num - 1:
                path = out / f"{task}-{len(paths):05d}.array_record"
                write_shard(path, batch)
                paths.append(path)
                batch = []
    print(f"[data] wrote {num} {task} episodes to {len(paths)} shard(s) in {out}")
    return paths


def _read_frames(stem: str, video_dir: Path, num_chunks: int) -> np.ndarray | None:
    from interaction_jax.serve.file_mode import read_frames_dir, read_video

    folder, mp4 = video_dir / stem, video_dir / f"{stem}.mp4"
    if folder.is_dir():
        first = next(p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        from PIL import Image

        w, h = Image.open(first).size
        frames = read_frames_dir(folder, h, w, num_chunks)
    elif mp4.exists():
        import av

        with av.open(str(mp4)) as c:
            stream = c.streams.video[0]
            h, w = stream.height, stream.width
        frames = read_video(mp4, h, w, num_chunks)
    else:
        return None
    return frames  # episode_from_bytes holds the last frame to the end and cuts the rest


def chunks_of(num_frames: int, samplerate: int) -> int:
    """200 ms chunks of an audio file of ``num_frames`` samples at ``samplerate``, once at 16 kHz."""
    samples = math.ceil(num_frames * SR / samplerate)
    return math.ceil(samples / CHUNK_SAMPLES)


def unreadable(e: Exception) -> ValueError:
    """The reason an audio file cannot be read, without the path or buffer libsndfile names (so the local and
    the Beam converter report the same reason for the same file)."""
    reason = str(e)
    if reason.startswith("Error opening "):
        reason = reason.rsplit(": ", 1)[-1]
    return ValueError(f"unreadable audio ({reason})")


def episode_from_bytes(name: str, audio: bytes, words: bytes | None, frames: np.ndarray | None = None
                       ) -> Episode:
    """One dialogue from its files' bytes (stereo audio, word JSON, decoded frames) -> a validated Episode.

    Raises ValueError saying why not. Shared by the local converter and the Beam pipeline, which reads
    the same bytes from any filesystem Beam knows (gs://, s3://, local), so both make identical episodes.
    """
    import io

    import soundfile as sf

    from interaction_jax.audio import dmel

    try:
        data, sr = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except Exception as e:
        raise unreadable(e) from e
    if data.shape[1] != 2:
        raise ValueError(f"expected stereo (left = model, right = user), got {data.shape[1]} channel(s)")
    if not np.isfinite(data).all():
        raise ValueError("audio contains NaN or inf")
    model, user = data[:, 0], data[:, 1]
    if sr != SR:
        print(f"[data] {name}: resampling {sr} Hz -> {SR} Hz", flush=True)
        model, user = dmel.resample(model, sr, SR), dmel.resample(user, sr, SR)
    stem = name.rsplit(".", 1)[0]
    if words is None:
        raise ValueError(f"no word timestamps ({stem}.json missing)")
    try:
        raw = json.loads(words)
        timed = sorted((float(w["start"]), str(w["word"]).strip()) for w in raw)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{stem}.json: expected [{{\"word\", \"start\", \"end\"}}] ({e})") from e
    if frames is not None:
        n_chunks = -(-user.size // CHUNK_SAMPLES)
        if len(frames) < n_chunks:  # hold the last frame to the end, as a camera would
            frames = np.concatenate([frames, np.repeat(frames[-1:], n_chunks - len(frames), 0)])
        frames = frames[:n_chunks]
    ep = Episode(user.astype(np.float32), model.astype(np.float32), frames, [], [w for w in timed if w[1]],
                 {"task": "dialogue", "source": name})
    return validate(ep, name)


def convert_one(wav: Path, words_dir: Path, video_dir: Path | None) -> Episode:
    """One stereo WAV + word JSON (+ frames) -> a validated Episode; raises ValueError saying why not."""
    words_path = words_dir / f"{wav.stem}.json"
    words = words_path.read_bytes() if words_path.exists() else None
    import soundfile as sf

    try:
        info = sf.info(str(wav))
    except Exception as e:
        raise unreadable(e) from e
    frames = _read_frames(wav.stem, video_dir, chunks_of(info.frames, info.samplerate)) if video_dir else None
    return episode_from_bytes(wav.name, wav.read_bytes(), words, frames)


def shard_name(index: int) -> str:
    """File name of the index-th converted shard (the local and the Beam converter agree on it)."""
    return f"converted-{index:05d}.array_record"


AUDIO_SUFFIXES = (".wav", ".flac")


def is_dialogue(name: str) -> bool:
    """A file name the converters take (any case of .wav/.flac; a bare ".wav" is a hidden file, not one)."""
    return PurePosixPath(name).suffix.lower() in AUDIO_SUFFIXES


def list_dialogues(audio_dir: str | Path) -> list[Path]:
    """The .wav/.flac files of a folder, sorted by name: the order episodes are numbered and sharded in."""
    folder = Path(audio_dir)
    if not folder.is_dir():
        raise InputError(f"{audio_dir}: not a folder")
    wavs = sorted((p for p in folder.iterdir() if p.is_file() and is_dialogue(p.name)), key=lambda p: p.name)
    if not wavs:
        raise InputError(f"{audio_dir}: no .wav or .flac files")
    return wavs


def check_output(out_files: list[str], out: str) -> None:
    """Refuse an output folder that already holds converted shards: a glob over it would read old ones too."""
    old = [f for f in out_files if f.startswith("converted-") and f.endswith(".array_record")]
    if old:
        raise InputError(f"{out} already holds {len(old)} converted shard(s) ({old[0]}, ...); remove them or "
                         "choose another --out")


def failure_reason(e: Exception) -> str:
    """Why a file was not converted: our own messages as they are, anything else with its type."""
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


class InputError(ValueError):
    """The converter's input or output folder cannot be used (one clear line on the command line)."""


def convert(audio_dir: str | Path, words_dir: str | Path, out: str | Path, *, video_dir: str | Path | None = None,
            shard_size: int = 64) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert a folder of dialogues into shards. Returns (shard paths, [(file, reason skipped)])."""
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    wavs = list_dialogues(audio_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_output([p.name for p in out.iterdir()], str(out))
    episodes, skipped, paths = [], [], []
    bar, job = _progress(len(wavs), "convert")
    with bar:
        for wav in wavs:
            try:
                episodes.append(convert_one(wav, Path(words_dir), Path(video_dir) if video_dir else None))
            except Exception as e:  # a bad file is listed with its reason, never fatal
                skipped.append((wav.name, failure_reason(e)))
            bar.advance(job)
            if len(episodes) == shard_size:
                paths.append(out / shard_name(len(paths)))
                write_shard(paths[-1], episodes)
                episodes = []
    if episodes:
        paths.append(out / shard_name(len(paths)))
        write_shard(paths[-1], episodes)
    print(f"[data] converted {len(wavs) - len(skipped)} of {len(wavs)} files into {len(paths)} shard(s) in {out}")
    for name, reason in skipped:
        print(f"[data] skipped {name}: {reason}")
    return paths, skipped


def show(shard: str | Path, index: int, out: str | Path, config=None) -> Path:
    """Draw one episode: user/model mel, text and word events on the 200 ms grid, frames, one chunk's slots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interaction_jax.audio import dmel
    from interaction_jax.config import Config
    from interaction_jax.layout import Layout, SlotType

    config = config or Config()
    ep = read_record(shard, index)
    lay = Layout.from_config(config.audio, config.vision, config.text)
    dur = ep.duration_s
    fig = plt.figure(figsize=(13, 9))
    grid = fig.add_gridspec(5, 1, height_ratios=[2, 2, 1.2, 1.2, 0.8], hspace=0.55)
    for row, (wave, title) in enumerate(((ep.user_audio, "user microphone"), (ep.model_audio, "model voice"))):
        ax = fig.add_subplot(grid[row])
        mel = dmel.log_mel_numpy(wave)
        ax.imshow(mel.T, origin="lower", aspect="auto", extent=(0, dur, 0, 80), vmin=-7, vmax=2, cmap="magma")
        ax.set_title(f"{title} (log10 mel)")
        ax.set_ylabel("mel bin")
        ax.set_xticks(np.arange(0, dur + 1e-6, 1.0))
    ax = fig.add_subplot(grid[2])
    for t in np.arange(0, dur + 1e-6, 0.2):
        ax.axvline(t, color="0.85", lw=0.6)
    for t, text in ep.model_words:
        ax.text(t, 0.65, text, fontsize=9, color="tab:blue")
        ax.plot([t, t], [0.5, 0.6], color="tab:blue")
    for t, text in ep.user_text:
        ax.text(t, 0.15, f'"{text}"', fontsize=9, color="tab:green")
    ax.set_xlim(0, dur)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.2, 0.7], ["user text", "model words"])
    ax.set_title("events on the 200 ms chunk grid")
    ax = fig.add_subplot(grid[3])
    if ep.frames is not None:
        step = max(1, len(ep.frames) // 16)
        strip = np.concatenate(list(ep.frames[::step][:16]), axis=1)
        ax.imshow(strip)
        ax.set_title(f"frames (every {step * 0.2:.1f} s)")
    else:
        ax.text(0.5, 0.5, "no video", ha="center")
    ax.axis("off")
    ax = fig.add_subplot(grid[4])
    colors = dict(zip(SlotType, ["0.3", "tab:purple", "tab:orange", "tab:green", "tab:blue", "tab:red"], strict=True))
    for i, kind in enumerate(lay.slot_types):
        ax.add_patch(plt.Rectangle((i, 0), 0.95, 1, color=colors[SlotType(kind)]))
    for kind in SlotType:
        if lay.counts[kind]:
            r = lay.slot_range(kind)
            ax.text((r.start + r.stop) / 2, 1.15, kind.name, ha="center", fontsize=8)
    ax.set_xlim(0, lay.slots_per_chunk)
    ax.set_ylim(0, 1.5)
    ax.axis("off")
    ax.set_title(f"one chunk: {lay.describe()}")
    fig.suptitle(f"{Path(shard).name} #{index}: task {ep.labels.get('task')}, {dur:.1f} s")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    print(f"[data] wrote {out}")
    return out
