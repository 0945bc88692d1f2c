"""WebSocket server over loopback with real `websockets` clients: 8 concurrent sessions, malformed input."""

import asyncio
import json
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import websockets
from flax import linen as nn

from interaction_jax import model as model_lib
from interaction_jax.config import load_config
from interaction_jax.serve.file_mode import stream_file
from interaction_jax.serve.server import AUDIO, Server, serve
from tests.small import small_overrides

ROOT = Path(__file__).resolve().parents[2]
SMALL = small_overrides(1, "model.max_chunks=16")
CHUNKS = 3


@pytest.fixture(scope="module")
def model():
    cfg = load_config(ROOT / "configs/tiny.py", SMALL)
    return cfg, nn.unbox(model_lib.init(jax.random.key(1), cfg))


def pcm(wave):
    return bytes([AUDIO]) + (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


async def client(port, seed, waves, text=None):
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(json.dumps({"type": "start", "seed": seed}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready"
        if text:
            await ws.send(json.dumps({"type": "text", "text": text}))
        audio = []
        for w in waves:
            await ws.send(pcm(w))
            while True:
                msg = await ws.recv()
                if isinstance(msg, bytes) and msg[0] == AUDIO:
                    audio.append(np.frombuffer(msg[1:], "<i2"))
                    break
        return np.concatenate(audio)


async def closed_reason(port, messages):
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        for m in messages:
            await ws.send(m)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), timeout=30)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code, e.rcvd.reason


def test_eight_concurrent_sessions_match_file_mode_and_survive_bad_clients(model):
    cfg, params = model
    rng = np.random.default_rng(0)
    waves = [[(0.1 * rng.standard_normal(3200)).astype(np.float32) for _ in range(CHUNKS)] for _ in range(8)]
    # what the server receives is PCM16: quantise the same way for the file-mode reference
    waves = [[np.frombuffer(pcm(w)[1:], "<i2").astype(np.float32) / 32768.0 for w in ws] for ws in waves]

    async def scenario():
        # 8 good sessions + the bad clients that do send "start"; row by row, so each is bit-identical to file mode
        server = Server(cfg, params, slots=10, row_invariant=True)
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(server, "127.0.0.1", 0, ready=ready, stop=stop, port_out=ports))
        await ready.wait()
        port = ports[0]
        bad = asyncio.gather(
            closed_reason(port, ['{"type": "start"}', bytes([AUDIO]) + b"\x00" * 10]),
            closed_reason(port, ["not json"]),
            closed_reason(port, ['{"type": "start"}', b"\x07abc"]),
        )
        good = asyncio.gather(*[client(port, 100 + i, waves[i]) for i in range(8)])
        bad_results, good_results = await asyncio.gather(bad, good)
        stop.set()
        await task
        return bad_results, good_results, server

    ports: list[int] = []
    bad_results, outputs, server = asyncio.run(scenario())
    (c1, r1), (c2, r2), (c3, r3) = bad_results
    assert (c1, c2, c3) == (1007, 1007, 1003)
    assert "6400 bytes of PCM16" in r1 and "first message" in r2 and "unknown binary message type 0x07" in r3
    for i in (0, 5):
        ref = stream_file(cfg, params, np.concatenate(waves[i]), seed=100 + i, progress=False)
        expected = (np.clip(ref["audio"], -1, 1) * 32767).astype("<i2")
        # the file-mode output is shifted by one chunk (aligned to the input); the wire carries chunk n's output
        np.testing.assert_array_equal(outputs[i][: 3200 * (CHUNKS - 1)], expected[3200:])
    assert sorted(server.free) == list(range(10))  # every slot came back after its client left


def test_server_refuses_when_full(model):
    cfg, params = model

    async def scenario():
        server = Server(cfg, params, slots=1)
        ready, stop = asyncio.Event(), asyncio.Event()
        ports: list[int] = []
        task = asyncio.create_task(serve(server, "127.0.0.1", 0, ready=ready, stop=stop, port_out=ports))
        await ready.wait()
        async with websockets.connect(f"ws://127.0.0.1:{ports[0]}/") as first:
            await first.send(json.dumps({"type": "start"}))
            await first.recv()
            code, reason = await closed_reason(ports[0], ['{"type": "start"}'])
        stop.set()
        await task
        return code, reason

    code, reason = asyncio.run(scenario())
    assert code == 1013 and "full" in reason


def test_sessions_start_and_stop_while_a_step_is_in_flight(model):
    """Start/Stop while another session's step runs: the engine state is donated to that step, so a reset
    from the event loop crashed with "Array has been deleted" and lost the slot. Resets now happen in the
    stepping thread; the streaming session is unaffected and every slot comes back."""
    cfg, params = model
    rng = np.random.default_rng(1)
    waves = [np.frombuffer(pcm((0.1 * rng.standard_normal(3200)).astype(np.float32))[1:], "<i2").astype(
        np.float32) / 32768.0 for _ in range(6)]

    async def scenario():
        server = Server(cfg, params, slots=2, row_invariant=True)  # compared bit-exactly with file mode
        original = server.engine.step

        def slow_step(*args, **kwargs):  # hold each step in flight long enough for the other session to act
            out = original(*args, **kwargs)
            time.sleep(0.15)
            return out

        server.engine.step = slow_step
        ready, stop = asyncio.Event(), asyncio.Event()
        ports: list[int] = []
        task = asyncio.create_task(serve(server, "127.0.0.1", 0, ready=ready, stop=stop, port_out=ports))
        await ready.wait()
        streaming = asyncio.create_task(client(ports[0], 5, waves))
        starts = fulls = 0
        while not streaming.done():  # a second user pressing Start / Stop over and over
            async with websockets.connect(f"ws://127.0.0.1:{ports[0]}/") as ws:
                await ws.send(json.dumps({"type": "start", "seed": starts}))
                try:
                    assert json.loads(await ws.recv())["type"] == "ready"
                except websockets.ConnectionClosed as e:  # a slot lost to a crashed session never comes back
                    assert e.rcvd.code == 1013
                    fulls += 1
                    await asyncio.sleep(0.05)
                    continue
                starts += 1
                await ws.send(pcm(waves[0]))
                assert isinstance(await ws.recv(), bytes)  # its own chunk came back
        audio = await streaming
        bad_seed = await closed_reason(ports[0], ['{"type": "start", "seed": -3}'])
        stop.set()
        await task
        return audio, starts, fulls, bad_seed, server

    audio, starts, fulls, bad_seed, server = asyncio.run(scenario())
    assert starts >= 3 and fulls == 0  # the race was really exercised, and no slot was lost
    ref = stream_file(cfg, params, np.concatenate(waves), seed=5, progress=False)
    expected = (np.clip(ref["audio"], -1, 1) * 32767).astype("<i2")
    np.testing.assert_array_equal(audio[: 3200 * 5], expected[3200:])
    assert sorted(server.free) == [0, 1]
    assert bad_seed == (1007, "seed must be an integer in [0, 2**32)")


def test_ctrl_c_stops_the_server_promptly_with_a_session_connected(tmp_path):
    """Ctrl-C used to take ~6 s with a browser connected (10 s close handshakes, a blocked event loop)."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "serve.py"
    script.write_text(f"""
import jax
from flax import linen as nn
from interaction_jax import model as model_lib
from interaction_jax.config import load_config
from interaction_jax.serve.server import Server, serve_forever
cfg = load_config({str(ROOT / "configs/tiny.py")!r}, {SMALL!r})
serve_forever(Server(cfg, nn.unbox(model_lib.init(jax.random.key(1), cfg)), slots=1), "127.0.0.1", 0)
""")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stdout:
            if "listening on" in line:
                port = int(line.split("ws://127.0.0.1:")[1].split()[0])
                break
        assert port, "the server never listened"

        async def connected_then_interrupted():
            async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send(json.dumps({"type": "start"}))
                await ws.recv()
                await ws.send(pcm(np.zeros(3200, np.float32)))
                await ws.recv()
                start = time.perf_counter()
                proc.send_signal(signal.SIGINT)
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), timeout=10)
                except websockets.ConnectionClosed as e:
                    return e.rcvd.code if e.rcvd else None, start

        code, start = asyncio.run(connected_then_interrupted())
        proc.wait(timeout=10)
        assert code == 1001  # "going away", sent by the server to its client
        assert time.perf_counter() - start < 3.0 and proc.returncode == 0
        assert "[serve] stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
