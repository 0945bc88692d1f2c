"""WebSocket server: many live sessions batched into one engine step per micro-turn.

    python -m interaction_jax serve --checkpoint runs/tiny [--host 127.0.0.1] [--port 8765] [--slots 8]

The micro-turn is compiled before the port opens (the step time and RTF are printed). Sessions are batched:
each session's outputs are independent of the others for a fixed slot count; ``--row-invariant`` decodes row
by row instead, so that a session is also bit-identical to ``stream`` file mode (at about slots x the cost).

Protocol (one WebSocket per session; ``GET /`` without an upgrade serves a small browser page):

client -> server
  * text ``{"type": "start", "seed": int?}``: first message; the server answers
    ``{"type": "ready", "session": id, "sample_rate": 16000, "chunk_samples": 3200}``.
  * binary ``0x01 + 6400 bytes``: one 200 ms chunk of mono PCM16 little-endian audio. Each chunk triggers
    exactly one micro-turn of this session.
  * binary ``0x02 + JPEG bytes``: the video frame for the next audio chunk (optional).
  * text ``{"type": "text", "text": str}``: typed text, queued FIFO into TEXT_IN.
server -> client, per audio chunk
  * binary ``0x01 + 6400 bytes``: the model's PCM16 audio for the next 200 ms.
  * binary ``0x03 + 2 x frames x n_mels bytes``: what the model heard (dMel bins x 16) and said (its
    normalised mel, 0..255), frames x n_mels each, for the page's scrolling spectrogram.
  * text ``{"type": "text", "chunk": n, "time": s, "tokens": [...], "text": str}`` when text-out is not PAD.
  * text ``{"type": "delegate", "text": str}`` for each closed ``<delegate>...</delegate>`` span.
  * text ``{"type": "stats", "chunk": n, "step_ms": f, "rtf": f, "backlog": k, "dropped": d}`` every
    ``STATS_EVERY`` chunks.
Falling behind: a session has at most one chunk in a step; chunks that arrive meanwhile wait in a backlog
of ``MAX_BACKLOG`` chunks, and the oldest is dropped beyond that (``{"type": "behind", "dropped": d}`` tells
the client), so a slow server costs audio, not an ever-growing delay (and Stop does not wait for it).
Errors: a malformed message closes *that* connection with code 1003 (unsupported data) or 1007 (invalid
payload) and a reason; a full server refuses with 1013. Other sessions are never affected.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from interaction_jax.config import Config
from interaction_jax.model import Sampling
from interaction_jax.serve.engine import DelegateTracker, Engine, TextInQueue
from interaction_jax.text import tokenizer

AUDIO, FRAME, MEL = 0x01, 0x02, 0x03
MAX_BACKLOG = 2  # chunks (400 ms) a session may queue while its previous chunk is being stepped
STATS_EVERY = 5  # chunks between stats messages (once a second)
MAX_MESSAGE_BYTES = 512 * 1024
MAX_TEXT_CHARS = 2000
STATIC = Path(__file__).with_name("static")


@dataclasses.dataclass
class Connection:
    slot: int
    chunk: int = 0
    frame: np.ndarray | None = None
    text: TextInQueue | None = None
    delegate: DelegateTracker = dataclasses.field(default_factory=DelegateTracker)
    pending: asyncio.Future | None = None
    backlog: collections.deque = dataclasses.field(default_factory=collections.deque)
    dropped: int = 0


class Server:
    """Owns the engine; a single batching task steps every session that has sent a chunk."""

    def __init__(self, config: Config, params: Any, *, slots: int = 8, sampling: Sampling | None = None,
                 on_delegate: Callable[[int, str], str | None] | None = None, batch_wait_s: float = 0.01,
                 row_invariant: bool = False):
        self.config = config
        # Batched by default: a session's outputs never depend on the other sessions in the step (fixed slot
        # count). row_invariant=True decodes row by row, bit-identical to file mode, at ~slots x the cost.
        self.engine = Engine(config, params, batch_slots=slots, sampling=sampling, row_invariant=row_invariant)
        self.state = self.engine.init_state()
        self.free = list(range(slots))
        self.conns: dict[int, Connection] = {}
        self.inbox: dict[int, tuple[Connection, np.ndarray]] = {}
        # Session starts are applied by the stepping thread, before its next step: the engine state is
        # donated to an in-flight step, so resetting it from the event loop crashed ("Array has been deleted").
        self._resets: dict[int, int] = {}  # slot -> seed
        self._resets_lock = threading.Lock()
        self.on_delegate = on_delegate
        self.batch_wait_s = batch_wait_s
        self.wake = asyncio.Event()
        self.steps = 0
        self._deliveries: set[asyncio.Task] = set()

    def warm_up(self) -> float:
        """Compile the micro-turn before any session is accepted; returns (and prints) the warm step time."""
        start = time.perf_counter()
        print(f"[serve] compiling the micro-turn for {self.engine.batch_slots} slots...", flush=True)
        self.state, step_s = self.engine.warm_up(self.state)
        print(f"[serve] compiled in {time.perf_counter() - start:.1f} s; warm step {step_s * 1e3:.0f} ms "
              f"(RTF {step_s / 0.2:.2f} with every slot busy)", flush=True)
        return step_s

    # ------------------------------------------------------------------ batching loop
    async def run_batches(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(self.batch_wait_s)  # let concurrent sessions' chunks join this step
            self.wake.clear()
            ready = dict(self.inbox)
            self.inbox.clear()
            if ready:
                await asyncio.get_running_loop().run_in_executor(None, self._step, ready)

    def _apply_resets(self) -> None:
        with self._resets_lock:
            resets, self._resets = self._resets, {}
        if resets:
            b = self.engine.batch_slots
            rows, seeds = np.zeros(b, bool), np.zeros(b, np.uint32)
            for slot, seed in resets.items():
                rows[slot], seeds[slot] = True, seed
            self.state = self.engine.reset(self.state, rows, seeds)

    def _step(self, ready: dict[int, tuple[Connection, np.ndarray]]) -> None:
        eng, b = self.engine, self.engine.batch_slots
        lay = eng.layout
        # a session that closed (or whose slot was taken by a new one) while its chunk waited is skipped
        for slot, (conn, _) in list(ready.items()):
            if self.conns.get(slot) is not conn:  # closed while it waited: skip it, and end its delivery
                del ready[slot]
                if conn.pending is not None:
                    conn.pending.get_loop().call_soon_threadsafe(_resolve, conn.pending, RuntimeError("session closed"))
        if not ready:
            return
        audio = np.zeros((b, self.config.audio.chunk_samples), np.float32)
        text_in = np.full((b, lay.num_text_in), tokenizer.PAD, np.int32)
        active = np.zeros(b, bool)
        frames = mask = None
        if lay.num_video:
            frames = np.zeros((b, self.config.vision.height, self.config.vision.width, 3), np.uint8)
            mask = np.zeros(b, bool)
        for slot, (conn, chunk) in ready.items():
            audio[slot], active[slot] = chunk, True
            text_in[slot] = conn.text.pop_chunk()
            if frames is not None and conn.frame is not None:
                frames[slot], mask[slot] = conn.frame, True
        try:
            self._apply_resets()
            self.state, out = eng.step(self.state, audio, frames, mask, text_in, active=active, advance=active)
            error = None
        except Exception as e:  # e.g. SessionEnded: report to those sessions, keep serving the rest
            out, error = None, e
        self.steps += 1
        for slot, (conn, _) in ready.items():
            if conn.pending is not None and not conn.pending.done():
                result = error if error is not None else {k: (v[slot] if isinstance(v, np.ndarray) else v)
                                                          for k, v in out.items()}
                conn.pending.get_loop().call_soon_threadsafe(_resolve, conn.pending, result)

    # ------------------------------------------------------------------ one connection
    async def handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            first = await asyncio.wait_for(ws.recv(), timeout=30)
            msg = _parse_json(first)
            if msg is None or msg.get("type") != "start":
                await ws.close(1007, 'first message must be {"type": "start"}')
                return
            if not self.free:
                await ws.close(1013, f"server full ({self.engine.batch_slots} sessions)")
                return
            seed = msg.get("seed", self.free[0])
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
                await ws.close(1007, "seed must be an integer in [0, 2**32)")
                return
            slot = self.free.pop(0)
            with self._resets_lock:
                self._resets[slot] = seed
            conn = Connection(slot=slot, text=TextInQueue(self.engine.layout.num_text_in))
            self.conns[slot] = conn
            try:  # from here on the slot goes back to the pool however the session ends
                await ws.send(json.dumps({"type": "ready", "session": slot,
                                          "sample_rate": self.config.audio.sample_rate,
                                          "chunk_samples": self.config.audio.chunk_samples,
                                          "frames_per_chunk": self.config.audio.frames_per_chunk,
                                          "n_mels": self.config.audio.n_mels}))
                async for message in ws:
                    reason = await self._on_message(ws, conn, message)
                    if reason:
                        await ws.close(*reason)
                        return
            except ConnectionClosed:
                raise
            except Exception as e:  # a bug must not cost a slot or close the socket without a reason
                print(f"[serve] session {slot}: {type(e).__name__}: {e}", flush=True)
                await ws.close(1011, f"server error: {type(e).__name__}: {e}"[:120])
            finally:
                self.conns.pop(slot, None)
                self.inbox.pop(slot, None)
                with self._resets_lock:  # clear the row: a stale cache would still set flash-decoding's trip count
                    self._resets.setdefault(slot, 0)
                self.free.append(slot)
        except (TimeoutError, ConnectionClosed):
            return

    async def _on_message(self, ws, conn: Connection, message: Any) -> tuple[int, str] | None:
        if isinstance(message, str):
            msg = _parse_json(message)
            if msg is None or msg.get("type") != "text" or not isinstance(msg.get("text"), str):
                return 1007, 'text messages must be JSON {"type": "text", "text": str}'
            if len(msg["text"]) > MAX_TEXT_CHARS:
                return 1009, f"text longer than {MAX_TEXT_CHARS} characters"
            conn.text.push(msg["text"])
            return None
        if not message:
            return 1003, "empty binary message"
        kind, payload = message[0], message[1:]
        if kind == FRAME:
            frame = _decode_jpeg(payload, self.config.vision.height, self.config.vision.width)
            if frame is None:
                return 1007, "frame is not a decodable JPEG/PNG image"
            conn.frame = frame
            return None
        if kind != AUDIO:
            return 1003, f"unknown binary message type 0x{kind:02x} (expected 0x01 audio or 0x02 frame)"
        expected = 2 * self.config.audio.chunk_samples
        if len(payload) != expected:
            return 1007, f"audio chunk must be {expected} bytes of PCM16 (200 ms), got {len(payload)}"
        chunk = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
        if conn.pending is None:
            self._submit(ws, conn, chunk)
            return None
        conn.backlog.append(chunk)  # the previous chunk is still being stepped
        if len(conn.backlog) > MAX_BACKLOG:
            conn.backlog.popleft()
            conn.dropped += 1
            await ws.send(json.dumps({"type": "behind", "dropped": conn.dropped,
                                      "reason": "the server is slower than real time; oldest audio dropped"}))
        return None

    def _submit(self, ws, conn: Connection, chunk: np.ndarray) -> None:
        """Queue one chunk of this session for the next step; its result is sent by ``_deliver``."""
        conn.pending = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._deliver(ws, conn, conn.pending))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        self.inbox[conn.slot] = (conn, chunk)
        self.wake.set()

    async def _deliver(self, ws, conn: Connection, pending: asyncio.Future) -> None:
        from websockets.exceptions import ConnectionClosed

        result = await pending
        try:
            if isinstance(result, Exception):
                await ws.close(1011, str(result)[:120])
                return
            await self._send_outputs(ws, conn, result)
        except ConnectionClosed:
            return
        conn.chunk += 1
        conn.pending = None
        if conn.backlog and self.conns.get(conn.slot) is conn:
            self._submit(ws, conn, conn.backlog.popleft())

    async def _send_outputs(self, ws, conn: Connection, out: dict[str, Any]) -> None:
        pcm = (np.clip(out["audio"], -1, 1) * 32767).astype("<i2").tobytes()
        await ws.send(bytes([AUDIO]) + pcm)
        heard = np.clip(np.asarray(out["audio_in_bins"]) * 16, 0, 255).astype(np.uint8)
        said = np.clip((np.asarray(out["mel"]) + 1.0) * 127.5, 0, 255).astype(np.uint8)
        await ws.send(bytes([MEL]) + heard.tobytes() + said.tobytes())
        if conn.chunk % STATS_EVERY == 0:
            await ws.send(json.dumps({"type": "stats", "chunk": conn.chunk, "step_ms": 1e3 * float(out["step_s"]),
                                      "rtf": float(out["rtf"]), "backlog": len(conn.backlog),
                                      "dropped": conn.dropped}))
        tokens = [int(t) for t in out["text_tokens"]]
        if any(t < 256 or t in (tokenizer.DELEGATE_START, tokenizer.DELEGATE_END) for t in tokens):
            await ws.send(json.dumps({"type": "text", "chunk": conn.chunk, "time": (conn.chunk + 1) * 0.2,
                                      "tokens": tokens, "text": tokenizer.decode(tokens)}))
        for span in conn.delegate.feed(np.array(tokens)):
            await ws.send(json.dumps({"type": "delegate", "text": span}))
            if self.on_delegate is not None:
                reply = self.on_delegate(conn.slot, span)
                if reply:
                    conn.text.push(reply)


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _parse_json(message: Any) -> dict | None:
    if not isinstance(message, str) or len(message) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = json.loads(message)
    except json.JSONDecodeError:
        return None
    return msg if isinstance(msg, dict) else None


def _decode_jpeg(data: bytes, height: int, width: int) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError

    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((width, height)), np.uint8)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


async def serve(server: Server, host: str = "127.0.0.1", port: int = 8765, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, port_out: list[int] | None = None, warm_up: bool = True) -> None:
    """Run until ``stop`` is set (forever if None). ``GET /`` without an upgrade returns the browser page."""
    import websockets
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    page = (STATIC / "index.html").read_bytes() if (STATIC / "index.html").exists() else b"interaction_jax"

    def process_request(connection, request):
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return Response(200, "OK", Headers([("Content-Type", "text/html; charset=utf-8")]), page)
        return None

    if warm_up:
        server.warm_up()
    batcher = asyncio.create_task(server.run_batches())
    # close_timeout: on shutdown each client gets 1 s to answer the close handshake (the default 10 s made
    # Ctrl-C take ~6 s with a browser connected)
    async with websockets.serve(server.handle, host, port, max_size=MAX_MESSAGE_BYTES, close_timeout=1,
                                process_request=process_request) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]  # the real port when 0 was asked for
        if port_out is not None:
            port_out.append(port)
        if ready is not None:
            ready.set()
        print(f"[serve] listening on ws://{host}:{port} ({server.engine.batch_slots} session slots)", flush=True)
        await (stop.wait() if stop is not None else asyncio.Future())
        ws_server.close()
    batcher.cancel()


def serve_forever(server: Server, host: str = "127.0.0.1", port: int = 8765) -> None:
    """``serve`` until Ctrl-C / SIGTERM; then close every session with a reason and return promptly."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(server, host, port, stop=stop)

    start = time.perf_counter()
    asyncio.run(main())
    print(f"[serve] stopped ({time.perf_counter() - start:.0f} s up, {server.steps} steps)", flush=True)
