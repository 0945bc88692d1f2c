"""Command line: ``python -m interaction_jax COMMAND ...`` (run with ``-h`` for each command's flags).

Heavy imports happen inside each command so ``config`` and ``--help`` answer instantly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="path to a configs/*.py file")
    p.add_argument("--set", action="append", default=[], metavar="A.B=C", help="override a config field")


def _load(args: argparse.Namespace):
    from interaction_jax.config import load_config

    return load_config(args.config, args.set)


# ------------------------------------------------------------------------------------------------ commands


def cmd_config(args: argparse.Namespace) -> int:
    from interaction_jax.config import dumps

    print(dumps(_load(args)))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from interaction_jax import flops

    rep = flops.report(_load(args))
    print(flops.format_report(rep))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    from interaction_jax.bench import report

    module = importlib.import_module(f"interaction_jax.bench.{args.name}")
    results = module.run(args)
    report(args.name, results, args.json)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from interaction_jax.train import train

    config = _load(args)
    result = train(config, args.workdir, max_steps=args.max_steps)
    if result["preempted"]:
        return 143  # 128 + SIGTERM: the babysitter restarts and resumes from the saved checkpoint
    if args.eval and result["step"] >= config.train.steps:
        return _evaluate(config, result["state"].params, args.workdir, config.data.tasks, config.train.eval_episodes)
    return 0


def _evaluate(config, params, workdir, tasks, episodes, json_path=None, *, source="model", oracle_noise=0.0,
              teacher_forced=False) -> int:
    from flax import linen as nn

    from interaction_jax.evals.run import evaluate, json_safe, markdown
    from interaction_jax.paths import Mirror, as_path

    if teacher_forced:
        from interaction_jax.evals import teacher_forced as tf

        results = tf.teacher_forced(config, nn.unbox(params), tuple(tasks), episodes)
        print(tf.markdown(results))
    else:
        # WAVs and PNGs are written by local-file libraries: stage them, then copy to a gs:// workdir.
        name = "eval" if source == "model" else "eval_oracle"
        mirror = Mirror(as_path(workdir) / name, seed_names=())
        results = evaluate(config, nn.unbox(params), tuple(tasks), episodes, mirror.local, source=source,
                           oracle_noise=oracle_noise)
        mirror.close()
        print(markdown(results))
        print(f"[eval] wrote {as_path(workdir) / name}/results.md, results.json, example WAVs and mel PNGs")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(json_safe(results), indent=2) + "\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from interaction_jax.data import synthetic
    from interaction_jax.serve.engine import load_params

    if args.oracle and args.teacher_forced:
        raise synthetic.TaskError("--oracle scores the targets themselves; it cannot be --teacher-forced too")
    if args.oracle_noise and not args.oracle:
        raise synthetic.TaskError("--oracle-noise needs --oracle")
    if args.oracle_noise < 0:
        raise synthetic.TaskError(f"--oracle-noise must be >= 0, got {args.oracle_noise}")
    if args.episodes < 1:
        raise synthetic.TaskError(f"--episodes must be >= 1, got {args.episodes}")
    if args.oracle and not args.checkpoint:
        from interaction_jax.config import load_config

        config, params = load_config(args.config or _TINY, args.set), None
    elif not args.checkpoint:
        raise synthetic.TaskError("eval needs --checkpoint (or --oracle, which needs no model)")
    else:
        from interaction_jax.config import apply_overrides
        from interaction_jax.serve.engine import check_params_match

        config, params = load_params(args.checkpoint)
        if args.set:  # sampling knobs (model.flow_head.cfg_scale, sample_steps) or eval episodes; not shapes
            config = apply_overrides(config, args.set)
            check_params_match(config, params, f"--set {' '.join(args.set)} changes the model in {args.checkpoint}")
    tasks = config.data.tasks if args.task == "all" else tuple(args.task.split(","))
    unknown = [t for t in tasks if t not in synthetic.TASKS]
    if unknown:
        raise synthetic.TaskError(f"unknown task(s) {unknown}; available: {', '.join(synthetic.TASKS)}")
    out = args.out or args.checkpoint or "runs/oracle"
    return _evaluate(config, params, out, tasks, args.episodes, args.json,
                     source="oracle" if args.oracle else "model", oracle_noise=args.oracle_noise,
                     teacher_forced=args.teacher_forced)


def cmd_stream(args: argparse.Namespace) -> int:
    from interaction_jax.serve import file_mode
    from interaction_jax.serve.engine import load_params

    config, params = load_params(args.checkpoint)
    if args.task:
        from flax import linen as nn

        from interaction_jax.evals.run import run_task

        # Row by row: bit-identical to the same episode inside `eval` run with row_invariant=True.
        res = run_task(config, nn.unbox(params), args.task, 1, seed=args.seed, row_invariant=True)
        print(json.dumps({"task": args.task, "seed": args.seed, **res["per_episode"][0]}, indent=2))
        if args.out:
            import soundfile as sf

            ep = res["episodes"][0]
            sf.write(args.out, res["generated"][0, : ep.user_audio.size], config.audio.sample_rate)
        return 0
    if not (args.audio and args.out):
        raise file_mode.InputError("stream needs --audio IN.wav and --out OUT.wav (or --task T --seed S)")
    audio = file_mode.read_audio(args.audio, config.audio.sample_rate)
    n = -(-audio.size // config.audio.chunk_samples)
    h, w = config.vision.height, config.vision.width
    frames = None
    if args.frames:
        frames = file_mode.read_frames_dir(args.frames, h, w, n)
    elif args.video:
        frames = file_mode.read_video(args.video, h, w, n)
    events = file_mode.read_text_events(args.text_events) if args.text_events else []
    res = file_mode.stream_file(config, params, audio, frames=frames, text_events=events, seed=args.seed)
    import soundfile as sf

    sf.write(args.out, res["audio"], config.audio.sample_rate)
    transcript = Path(args.out).with_suffix(".json")
    transcript.write_text(json.dumps([{"time": t, "text": x} for t, x in res["transcript"]], indent=2) + "\n")
    print(f"[stream] wrote {args.out} and {transcript}; mean RTF {res['rtf_mean']:.3f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from interaction_jax.checkpoint import export_params
    from interaction_jax.serve.engine import load_params

    config, params = load_params(args.checkpoint)
    path = export_params(params, config, args.out, args.dtype)
    print(f"[export] wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and {Path(args.out) / 'config.json'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from interaction_jax.serve.engine import load_params
    from interaction_jax.serve.server import Server, serve_forever

    config, params = load_params(args.checkpoint)
    serve_forever(Server(config, params, slots=args.slots, row_invariant=args.row_invariant), args.host, args.port)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from interaction_jax.data import synthetic, tools

    if args.data_command == "synth":
        tools.synth(args.task, args.num, args.out, seed=args.seed, shard_size=args.shard_size, voice=args.voice,
                    echo=not args.no_echo)
    elif args.data_command == "convert":
        if args.shard_size < 1:
            raise synthetic.TaskError(f"--shard-size must be >= 1, got {args.shard_size}")
        if args.beam_arg and not args.runner:
            raise synthetic.TaskError("--beam-arg needs --runner")
        if args.runner:
            from interaction_jax.data import beam_convert

            skipped = beam_convert.run(args.audio, args.words, args.out, video_dir=args.video,
                                       shard_size=args.shard_size, runner=args.runner, pipeline_args=args.beam_arg)
        else:
            _, skipped = tools.convert(args.audio, args.words, args.out, video_dir=args.video,
                                       shard_size=args.shard_size)
        return 1 if skipped and args.strict else 0
    else:
        config = _load(args) if args.config else None
        tools.show(args.shard, args.index, args.out, config)
    return 0


def cmd_aot(args: argparse.Namespace) -> int:
    from interaction_jax import aot

    if args.table:
        print(aot.summary_table(aot.load_reports(args.table)))
        return 0
    if not args.config:
        raise aot.ReportError("aot needs --config (or --table REPORT.json ... to summarise earlier runs)")
    result = aot.run(_load(args), args.topology, args.num_slices, correct_flops=not args.no_flops_correction,
                     serve_slots=args.serve_slots)
    print(aot.format_result(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if not result["fits"]:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_demo_frontends(args: argparse.Namespace) -> int:
    from interaction_jax.demo import demo_frontends

    demo_frontends(Path(args.out))
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from interaction_jax.evals import curves

    rows = curves.read_metrics(args.run)
    out = curves.plot(rows, args.out, title=args.title or str(args.run))
    print(f"[curves] {len(rows)} logged steps (last: step {rows[-1]['step']}, loss {rows[-1].get('loss', 'n/a')}) "
          f"-> {out}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from interaction_jax.demo import quickstart

    return quickstart(Path(args.workdir))


# ------------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m interaction_jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("params", help="parameters per component, total/active, model FLOPs per token")
    _add_config_args(p)
    p.add_argument("--json", help="write the report here (keys: total, active, flops_per_token, components)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("train", help="train a config (resumes from WORKDIR/checkpoints), then evaluate")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="run directory (local path or gs://)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (keeps the schedule)")
    p.add_argument("--no-eval", dest="eval", action="store_false", help="skip the final evaluation")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="free-running interactivity evaluation of a checkpoint")
    p.add_argument("--checkpoint", help="training workdir or its checkpoints/ folder")
    p.add_argument("--oracle", action="store_true", help="score the episodes' own target mel through the same "
                   "vocoder and scorers (the ceiling; needs no checkpoint)")
    p.add_argument("--oracle-noise", type=float, default=0.0, help="with --oracle: add Gaussian noise of this std "
                   "(normalised mel units) to the targets")
    p.add_argument("--teacher-forced", action="store_true", help="per-task teacher-forced metrics: word accuracy, "
                   "EPAD timing error, flow loss on voiced vs silent blocks")
    p.add_argument("--config", default=None, help="with --oracle and no checkpoint: config (default tiny)")
    p.add_argument("--set", action="append", default=[], metavar="A.B=C",
                   help="override a config field; with --checkpoint, one that keeps the model's shapes "
                   "(e.g. model.flow_head.cfg_scale=2)")
    p.add_argument("--task", default="all", help="task name, comma list, or all")
    p.add_argument("--episodes", type=int, default=8, help="held-out episodes per task")
    p.add_argument("--out", default=None, help="output directory (default: the checkpoint workdir)")
    p.add_argument("--json", help="write {task: {metric: value}} here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("stream", help="file mode: stream a WAV (or a synthetic episode) through one session")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--audio", help="microphone WAV (16 kHz; other rates are resampled)")
    p.add_argument("--video", help="mp4, sampled at 5 fps (needs the [video] extra)")
    p.add_argument("--frames", help="folder of frame images, one per 200 ms")
    p.add_argument("--text-events", help='JSON [{"time": s, "text": "..."}] typed into TEXT_IN')
    p.add_argument("--out", help="output WAV (transcript JSON written beside it)")
    p.add_argument("--task", help="stream a synthetic episode of this task and print its score")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("export", help="params-only model folder (params.npz + config.json) for stream/eval/serve")
    p.add_argument("--checkpoint", required=True, help="training workdir or its checkpoints/ folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="WebSocket server (protocol in interaction_jax/serve/server.py)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--slots", type=int, default=8, help="concurrent sessions batched per step")
    p.add_argument("--row-invariant", action="store_true",
                   help="decode row by row: each session bit-identical to `stream` file mode (slower)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("data", help="synthesize, convert and draw episode shards")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("synth", help="generate synthetic task episodes into ArrayRecord shards")
    d.add_argument("--task", required=True)
    d.add_argument("--num", type=int, required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--shard-size", type=int, default=256)
    d.add_argument("--no-echo", action="store_true")
    d.add_argument("--voice", default="dtmf", help="voice family: dtmf (default) or speech (extras speech,asr "
                   "and Debian's espeak-ng)")
    d.set_defaults(func=cmd_data)
    d = dsub.add_parser("convert", help="stereo WAV (L=model, R=user) + word JSON (+ video) -> shards")
    d.add_argument("--audio", required=True)
    d.add_argument("--words", required=True)
    d.add_argument("--video", default=None, help="folder of <stem>.mp4 or <stem>/ frame folders")
    d.add_argument("--out", required=True)
    d.add_argument("--strict", action="store_true", help="exit 1 if any file was skipped")
    d.add_argument("--shard-size", type=int, default=64, help="episodes per shard")
    d.add_argument("--runner", default=None, help="run as an Apache Beam pipeline on this runner (DirectRunner, "
                   "DataflowRunner, ...; extra [beam]); paths may then be gs:// and --video holds <stem>.mp4 only. "
                   "Bad files go to <out>/dead_letter.jsonl")
    d.add_argument("--beam-arg", action="append", default=[], help="a Beam pipeline option, e.g. "
                   "--beam-arg=--project=P --beam-arg=--region=R --beam-arg=--temp_location=gs://B/tmp")
    d.set_defaults(func=cmd_data)
    d = dsub.add_parser("show", help="draw one episode (mel, events, frames, slot layout) to a PNG")
    d.add_argument("shard")
    d.add_argument("--index", type=int, default=0)
    d.add_argument("--out", required=True)
    d.add_argument("--config", default=None, help="config whose layout to draw (default: tiny)")
    d.add_argument("--set", action="append", default=[])
    d.set_defaults(func=cmd_data)

    p = sub.add_parser("aot", help="compile the train step for a TPU topology on CPU; check it fits HBM")
    _add_config_args(p, required=False)
    p.add_argument("--table", nargs="+", metavar="REPORT.json", help="print the markdown table of earlier --json "
                   "reports and exit (no compile)")
    p.add_argument("--topology", default=None, help="e.g. v5e:4x4, v5p:4x4x4 (default: the config's own)")
    p.add_argument("--num-slices", type=int, default=1, help="multi-slice: data axis over DCN")
    p.add_argument("--no-flops-correction", action="store_true",
                   help="skip the scan FLOP correction (one compile fewer)")
    p.add_argument("--serve-slots", type=int, default=1,
                   help="also compile the serving micro-turn with this many sessions per batch shard (0 = skip)")
    p.add_argument("--json", help="write the report here")
    p.set_defaults(func=cmd_aot)

    p = sub.add_parser("bench", help="benchmarks -> markdown table + JSON")
    p.add_argument("name", choices=["dmel", "compile", "train", "data", "stream"])
    p.add_argument("--json", help="write results here")
    p.add_argument("--plot", help="stream: step time vs context PNG (default: the --json path with .png)")
    p.add_argument("--seconds", type=float, default=60.0, help="dmel: seconds of audio")
    p.add_argument("--config", default=None, help="compile/train/data: config (default configs/tiny.py)")
    p.add_argument("--set", action="append", default=[], metavar="A.B=C", help="train: config overrides")
    p.add_argument("--steps", type=int, default=5, help="train: timed steps")
    p.add_argument("--workers", type=int, default=0, help="data: grain mp_prefetch workers")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo-frontends", help="log-mel/dMel PNG, Griffin-Lim WAV and hMLP token image")
    p.add_argument("--out", default="out/demo", help="output directory")
    p.set_defaults(func=cmd_demo_frontends)

    p = sub.add_parser("curves", help="plot loss / text CE / flow loss / word accuracy from a run's metrics.jsonl")
    p.add_argument("run", help="training workdir or its metrics.jsonl")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--title", default="")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("quickstart", help="the README's main command")
    p.add_argument("--workdir", default="runs/quickstart")
    p.set_defaults(func=cmd_quickstart)
    return parser


_TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.py")

# Errors caused by the user's input: print one clear line instead of a traceback.
USER_ERRORS = (
    "TaskError", "ConfigError", "DoesNotFit", "CheckpointError", "EpisodeError", "SessionEnded", "AudioInputError",
    "InputError", "MetricsError", "ReportError", "MissingExtra",
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & set(USER_ERRORS):
            label = "config error" if "ConfigError" in names else "error"
            print(f"{label}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
