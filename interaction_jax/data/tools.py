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
from pathlib import Path

import numpy as np

from interaction_jax.data.episode import Episode, EpisodeError, read_record, validate, write_shard

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
        raise ValueError(f"unknown task {task!r}; available: {', '.join(synthetic.TASKS)}")
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
    if len(frames) < num_chunks:  # hold the last frame to the end, as a camera would
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_chunks - len(frames), 0)])
    return frames[:num_chunks]


def convert_one(wav: Path, words_dir: Path, video_dir: Path | None) -> Episode:
    """One stereo WAV + word JSON (+ frames) -> a validated Episode; raises ValueError saying why not."""
    import soundfile as sf

    from interaction_jax.audio import dmel

    try:
        audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    except Exception as e:
        raise ValueError(f"unreadable audio ({e})") from e
    if audio.shape[1] != 2:
        raise ValueError(f"expected stereo (left = model, right = user), got {audio.shape[1]} channel(s)")
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or inf")
    model, user = audio[:, 0], audio[:, 1]
    if sr != SR:
        print(f"[data] {wav.name}: resampling {sr} Hz -> {SR} Hz", flush=True)
        model, user = dmel.resample(model, sr, SR), dmel.resample(user, sr, SR)
    words_path = words_dir / f"{wav.stem}.json"
    if not words_path.exists():
        raise ValueError(f"no word timestamps ({words_path.name} missing)")
    try:
        raw = json.loads(words_path.read_text())
        words = sorted((float(w["start"]), str(w["word"]).strip()) for w in raw)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{words_path.name}: expected [{{\"word\", \"start\", \"end\"}}] ({e})") from e
    n = user.size
    frames = _read_frames(wav.stem, video_dir, -(-n // 3200)) if video_dir else None
    ep = Episode(user.astype(np.float32), model.astype(np.float32), frames, [], [w for w in words if w[1]],
                 {"task": "dialogue", "source": wav.name})
    return validate(ep, str(wav))


def convert(audio_dir: str | Path, words_dir: str | Path, out: str | Path, *, video_dir: str | Path | None = None,
            shard_size: int = 64) -> tuple[list[Path], list[tuple[str, str]]]:
    """Convert a folder of dialogues into shards. Returns (shard paths, [(file, reason skipped)])."""
    wavs = sorted(p for p in Path(audio_dir).iterdir() if p.suffix.lower() in (".wav", ".flac"))
    if not wavs:
        raise ValueError(f"{audio_dir}: no .wav or .flac files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    episodes, skipped, paths = [], [], []
    bar, job = _progress(len(wavs), "convert")
    with bar:
        for wav in wavs:
            try:
                episodes.append(convert_one(wav, Path(words_dir), Path(video_dir) if video_dir else None))
            except (ValueError, EpisodeError) as e:
                skipped.append((wav.name, str(e)))
            bar.advance(job)
            if len(episodes) == shard_size:
                paths.append(out / f"converted-{len(paths):05d}.array_record")
                write_shard(paths[-1], episodes)
                episodes = []
    if episodes:
        paths.append(out / f"converted-{len(paths):05d}.array_record")
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
