"""Soak: 32 concurrent sessions for 60 s of audio each, while other sessions join and leave *during* steps
and bad clients send malformed frames. Nothing may be dropped, crash, leak a slot, or corrupt a session:
the first session's audio must equal the same session stepped alone through an engine of the same size."""

import asyncio
import gc
import json
import resource
from pathlib import Path

import jax
import numpy as np
import pytest
import websockets
from flax import linen as nn

from interaction_jax import model as model_lib
from interaction_jax.config import load_config
from interaction_jax.serve.engine import Engine
from interaction_jax.serve.server import AUDIO, FRAME, Server, serve
from tests.serve.test_server import pcm
from tests.small import small_overrides

ROOT = Path(__file__).resolve().parents[2]
SLOTS, LONG, CHURN = 36, 32, 3  # 32 sessions for the whole run, 3 slots of short sessions, 1 for bad clients
CHUNKS = 300  # 60 s


def _rss_mb() -> float:
    """Current resident set (not the peak: ru_maxrss also counts transient spikes), after a collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


@pytest.fixture(scope="module")
def model():
    # 2 Griffin-Lim iterations: this test is about the server's robustness, not the audio's quality
    cfg = load_config(ROOT / "configs/tiny.py", small_overrides(1, "model.max_chunks=320", "audio.griffin_lim_iters=2"))
    return cfg, nn.unbox(model_lib.init(jax.random.key(4), cfg))


async def _session(port, seed, waves, frames_every=0):
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"type": "start", "seed": seed}))
        assert json.loads(await ws.recv())["type"] == "ready"
        out, dropped = [], 0
        for n, w in enumerate(waves):
            if frames_every and n % frames_every == 0:
                await ws.send(bytes([FRAME]) + _jpeg(n))
            await ws.send(pcm(w))
            while True:
                msg = await ws.recv()
                if isinstance(msg, bytes) and msg[0] == AUDIO:
                    out.append(np.frombuffer(msg[1:], "<i2"))
                    break
                if isinstance(msg, str) and json.loads(msg)["type"] == "behind":
                    dropped += 1
        return np.concatenate(out), dropped


def _jpeg(n: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (80, 80), (n % 256, 40, 90)).save(buf, "JPEG")
    return buf.getvalue()


async def _malformed(port, message):
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"type": "start"}))
        await ws.recv()
        await ws.send(message)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=30)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code


def test_soak_32_sessions_with_churn_and_malformed_frames(model):
    cfg, params = model
    rng = np.random.default_rng(0)
    waves = [[np.frombuffer(pcm((0.05 * rng.standard_normal(3200)).astype(np.float32))[1:], "<i2").astype(
        np.float32) / 32768.0 for _ in range(CHUNKS)] for _ in range(4)]

    async def scenario():
        server = Server(cfg, params, slots=SLOTS)
        ready, stop, ports = asyncio.Event(), asyncio.Event(), []
        task = asyncio.create_task(serve(server, "127.0.0.1", 0, ready=ready, stop=stop, port_out=ports))
        await ready.wait()
        port = ports[0]
        first = asyncio.create_task(_session(port, 1000, waves[0], frames_every=0))
        while not server.conns:  # the first session holds slot 0 (the reference below replays it)
            await asyncio.sleep(0.01)
        longs = [asyncio.create_task(_session(port, 1000 + i, waves[i % 4], frames_every=5))
                 for i in range(1, LONG)]
        rss = []

        async def churn(k):  # short sessions joining and leaving while the long ones stream
            results = []
            while not first.done():
                results.append(await _session(port, 5000 + 100 * k + len(results), waves[k][:12], frames_every=3))
            return results

        async def bad():
            codes = []
            while not first.done():
                codes.append(await _malformed(port, bytes([FRAME]) + b"not a jpeg"))
                codes.append(await _malformed(port, bytes([AUDIO]) + b"\x00" * 11))
                rss.append(_rss_mb())
                await asyncio.sleep(0.2)
            return codes

        churns = [asyncio.create_task(churn(k)) for k in range(CHURN)]
        bads = asyncio.create_task(bad())
        results = await asyncio.gather(first, *longs)
        churned = await asyncio.gather(*churns)
        codes = await bads
        stop.set()
        await task
        return server, results, churned, codes, rss

    server, results, churned, codes, rss = asyncio.run(scenario())
    assert sorted(server.free) == list(range(SLOTS))  # every slot came back
    assert all(len(a) == CHUNKS * 3200 and d == 0 for a, d in results)  # nobody dropped or cut short
    assert sum(len(c) for c in churned) >= 6 and all(len(a) == 12 * 3200 for c in churned for a, _ in c)
    assert codes and set(codes) == {1007}
    # Memory flat after warm-up: the median RSS of the last quarter of the samples against the second
    # quarter's. One sample against another failed once inside the full suite (+78 MB in a 5 GB process:
    # the allocator's transient spikes); a leak per session or chunk moves the whole quarter, a spike does not.
    q = len(rss) // 4
    assert q >= 2, rss
    assert np.median(rss[-q:]) - np.median(rss[q : 2 * q]) < 64, rss

    # Not corrupted: session 1000 (slot 0) equals the same session stepped alone in a 36-slot engine.
    engine = Engine(cfg, params, batch_slots=SLOTS)
    state = engine.reset(engine.init_state(), np.eye(SLOTS, dtype=bool)[0], np.array([1000] + [0] * (SLOTS - 1)))
    row = np.eye(SLOTS, dtype=bool)[0]
    expected = []
    for w in waves[0]:
        audio = np.zeros((SLOTS, 3200), np.float32)
        audio[0] = w
        state, out = engine.step(state, audio, active=row, advance=row)
        expected.append((np.clip(out["audio"][0], -1, 1) * 32767).astype("<i2"))
    np.testing.assert_array_equal(results[0][0], np.concatenate(expected))
