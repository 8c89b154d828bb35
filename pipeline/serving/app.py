"""`eco serve`: ECO behind HTTP on Ray Serve, for whole clips and for live streams.

    HTTP --> ECOIngress (FastAPI; limits, stream routing) --+--> ECOClips        (autoscaling model replicas)
                                                            +--> ECOStreams<i>   (one replica each, fixed count)

Routes (docs/inference.md, "Serving"):
    POST   /v1/clips?top_k=K&name=N       body: a video file   -> `eco predict --json`'s document for that video
    POST   /v1/streams                    JSON {every, top_k, idle_s, fps} (all optional) -> 201 {stream_id, ...}
    POST   /v1/streams/{id}/frames        body: one JPEG, or several as multipart parts -> the current prediction
    GET    /v1/streams/{id}               the current prediction (does not count as use)
    DELETE /v1/streams/{id}               ends the stream: the queued frames are classified (as at the end of a
                                          video in `eco predict --online`) and the final prediction returned
    GET    /health                        every model deployment answers

Both kinds of model replica are one class, `ECOModel`: a `Predictor` (a checkpoint or an `eco export` file),
killable decode children for clips, the open streams (`OnlineStream` objects, pipeline.inference.online, the
code `eco predict --online` runs) and one `serve.batch` queue that clips and stream updates share.

A stream's working memory lives on one replica, so its requests must reach that replica. The ingress hashes the
server-minted stream id to one of `stream_shards` single-replica deployments: exact and stable, since the shard
count does not change while the application runs (an autoscaled set of replicas would move streams when it
resizes; Serve's model multiplexing routes by id only as a preference and, when that replica is busy, sends the
request elsewhere, where the stream's memory is not).

Nothing a client sends names a file: uploads are written under a name the replica chooses, in a directory it
owns, and deleted after decoding; checkpoints come from the operator's settings; JPEGs are decoded by Pillow
after a header check of their size; no request body is unpickled.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (Request) at runtime.

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.serving.frames import decode_jpeg, split_frames
from pipeline.serving.settings import ServeSettings, from_args
from pipeline.serving.streams import StreamError, StreamTable, new_stream_id, valid_stream_id

log = logging.getLogger(__name__)

# Reason codes of pipeline.data.decode that mean "this is not a video at all" (415); others are 422.
_NOT_MEDIA = {"not_a_video", "audio_only", "empty"}


def _error(status: int, reason: str, detail: str) -> dict[str, Any]:
    return {"status": status, "body": {"error": reason, "detail": detail}}


class ECOModel:
    """A model replica: clips and stream updates through one batched forward (see the module docstring)."""

    def __init__(self, settings: dict[str, Any]):
        from pipeline.inference.predictor import Predictor

        self.settings = s = ServeSettings.from_dict(settings)
        if s.exported:
            from pipeline.inference.export import load_exported

            self.predictor = load_exported(s.exported, decode_timeout_s=s.decode_timeout_s)
        else:
            self.predictor = Predictor.from_checkpoint(s.checkpoint, decode_timeout_s=s.decode_timeout_s)
        self._forward.set_max_batch_size(s.max_batch_size)
        self._forward.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.streams = StreamTable(max_streams=s.max_streams)
        self._uploads = Path(tempfile.mkdtemp(prefix="eco-serve-"))
        self._decoders: asyncio.Queue | None = None
        self._all_decoders: list = []
        self.batches = 0
        self.batched_clips = 0

    # -- the model --------------------------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _forward(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities (C,) per uint8 clip (T, crop, crop, 3); clips of concurrent requests share a batch."""
        self.batches += 1
        self.batched_clips += len(clips)
        # In a thread: the event loop keeps accepting requests (and filling the next batch) during the forward.
        probs, _ = await asyncio.to_thread(self.predictor.predict_clips, np.stack(clips))  # (N, C)
        return list(probs)

    def _top_k(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        (ids, values), = self.predictor.top_k(probs[None], k)
        return [{"label": self.predictor.label_names[i], "label_id": i, "prob": round(v, 6)}
                for i, v in zip(ids, values)]

    # -- clips ------------------------------------------------------------------------------------------------

    async def _decoder(self):
        from pipeline.data.isolation import IsolatedDecoder

        if self._decoders is None:
            self._decoders = asyncio.Queue()
            for _ in range(self.settings.decoders_per_replica):
                decoder = IsolatedDecoder(timeout_s=self.settings.decode_timeout_s, max_clips_per_process=2000)
                self._all_decoders.append(decoder)
                self._decoders.put_nowait(decoder)
        return await self._decoders.get()

    def _check_frames(self, info) -> None:
        if info.num_frames > self.settings.max_clip_frames:
            raise StreamError(413, "too_many_frames",
                              f"the video has {info.num_frames} frames; at most {self.settings.max_clip_frames}")

    async def clip(self, data: bytes, top_k: int, name: str) -> dict[str, Any]:
        """The top-k of one uploaded video, as `eco predict --json` prints it (a document with one result)."""
        from pipeline.data.decode import DecodeError

        path = self._uploads / f"{uuid.uuid4().hex}.upload"  # our name, our directory: never the client's
        await asyncio.to_thread(path.write_bytes, data)
        decoder = await self._decoder()
        try:
            # The container's index first (no decoding): a long video is refused before the exact probe, which
            # decodes every frame once to count them, would spend its decode time.
            self._check_frames(await asyncio.to_thread(decoder.probe, str(path), exact=False))
            clip = await asyncio.to_thread(self.predictor.load_clip, str(path), decoder=decoder,
                                           check=self._check_frames)
        except StreamError as e:
            return _error(e.status, e.reason, e.detail)
        except DecodeError as e:
            detail = (e.detail or e.reason).replace(str(path), name)
            return _error(415 if e.reason in _NOT_MEDIA else 422, e.reason, detail)
        finally:
            self._decoders.put_nowait(decoder)
            path.unlink(missing_ok=True)
        probs = await self._forward(clip)
        p = self.predictor.preprocessing
        return {"status": 200, "body": {
            "checkpoint": os.path.basename(self.settings.model_source.rstrip("/")),
            "preprocessing": {"num_segments": p.num_segments, "short_side": p.short_side, "crop_size": p.crop_size,
                              "normalization": p.normalization},
            "results": [{"path": name, "top_k": self._top_k(probs, top_k)}]}}

    # -- streams ----------------------------------------------------------------------------------------------

    def _describe(self, stream_id: str, stream, *, updated: bool | None = None) -> dict[str, Any]:
        last = stream.updates[-1] if stream.updates else None
        out = {"stream_id": stream_id, "frames": stream.frames, "queued": stream.queued, "every": stream.every,
               "memory": stream.memory.size, "updates": len(stream.updates),
               "prediction": last.to_dict() if last else None}
        if updated is not None:
            out["updated"] = updated
        return out

    async def create_stream(self, stream_id: str, every: int, top_k: int, idle_s: float, fps: float) -> dict:
        from pipeline.inference.online import OnlineStream

        stream = OnlineStream(self.predictor.preprocessing, self.predictor.label_names, every=every, top_k=top_k,
                              fps=fps)
        try:
            self.streams.create(stream_id, stream, idle_s=idle_s)
        except StreamError as e:
            return _error(e.status, e.reason, e.detail)
        body = {**self._describe(stream_id, stream), "idle_s": idle_s, "top_k": top_k}
        return {"status": 201, "body": body}

    async def push_frames(self, stream_id: str, data: bytes, content_type: str) -> dict[str, Any]:
        """Queue the request's JPEG frames in order; every time `every` frames are queued, update the memory and
        classify it (the updates of one request go through the batch queue one after the other)."""
        arrived = time.perf_counter()
        s = self.settings
        try:
            self.streams.sweep()
            entry = self.streams.get(stream_id)
            parts = split_frames(data, content_type, max_frames=s.max_frames_per_request)
            frames = await asyncio.to_thread(lambda: [decode_jpeg(p, max_pixels=s.max_frame_pixels) for p in parts])
        except StreamError as e:
            return _error(e.status, e.reason, e.detail)
        async with entry.lock:  # one stream's frames are pushed in arrival order, one request at a time
            stream = entry.state
            new = []
            for frame in frames:
                if stream.push(frame):
                    probs = await self._forward(stream.next_clip())
                    new.append(stream.record(probs, arrived).to_dict())
            self.streams.touch(entry)
            body = self._describe(stream_id, stream, updated=bool(new))
            body["new_updates"] = new
            return {"status": 200, "body": body}

    async def stream_state(self, stream_id: str) -> dict[str, Any]:
        try:
            entry = self.streams.get(stream_id, touch=False)
        except StreamError as e:
            return _error(e.status, e.reason, e.detail)
        return {"status": 200, "body": self._describe(stream_id, entry.state)}

    async def end_stream(self, stream_id: str) -> dict[str, Any]:
        """Classify the frames still queued (the end of a video in `eco predict --online`) and forget the stream."""
        try:
            entry = self.streams.get(stream_id)
        except StreamError as e:
            return _error(e.status, e.reason, e.detail)
        async with entry.lock:
            stream = entry.state
            if stream.queued:
                arrived = time.perf_counter()
                stream.record(await self._forward(stream.next_clip()), arrived)
            self.streams.remove(stream_id)
            body = self._describe(stream_id, stream)
            body["final"] = body["prediction"]["top_k"] if body["prediction"] else []
            return {"status": 200, "body": body}

    # -- health -----------------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        import torch

        return {"device": self.predictor.device.type, "torch_threads": torch.get_num_threads(),
                "open_streams": len(self.streams), "batches": self.batches,
                "batched_clips": self.batched_clips}

    def check_health(self) -> None:
        # Serve calls this every few seconds: a cheap moment to free the memory of streams nobody ended.
        self.streams.sweep()

    def __del__(self) -> None:
        for decoder in getattr(self, "_all_decoders", ()):
            decoder.close()
        if getattr(self, "_uploads", None) is not None:
            shutil.rmtree(self._uploads, ignore_errors=True)


api = FastAPI(title="ECO", description="ECO video classification: clips and live streams (docs/inference.md)")


class _HTTPError(Exception):
    def __init__(self, status: int, reason: str, detail: str):
        self.status, self.reason, self.detail = status, reason, detail


@api.exception_handler(_HTTPError)
async def _http_error(request: Request, e: _HTTPError) -> JSONResponse:
    return JSONResponse({"error": e.reason, "detail": e.detail}, status_code=e.status)


@api.exception_handler(StarletteHTTPException)
async def _no_route(request: Request, e: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own 404/405 in the same shape as ours, so clients read one error format.
    reason = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return JSONResponse({"error": reason, "detail": f"{request.method} {request.url.path}: {e.detail}"},
                        status_code=e.status_code)


def _reply(result: dict[str, Any]) -> JSONResponse:
    return JSONResponse(result["body"], status_code=result["status"])


@serve.ingress(api)
class ECOIngress:
    """HTTP: reads bodies within the limits, validates parameters, routes a stream's requests to its shard."""

    def __init__(self, clips, streams: list, settings: dict[str, Any]):
        self.clips = clips
        self.shards = streams
        self.settings = ServeSettings.from_dict(settings)

    async def _body(self, request: Request, *, kind: str, empty_ok: bool = False) -> bytes:
        """The request body, refused (413) as soon as it passes the limit, before it is all read."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _HTTPError(413, "body_too_large", f"{kind} of {int(declared)} bytes; at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _HTTPError(413, "body_too_large", f"{kind} over {limit} bytes")
            chunks.append(chunk)
        if not size and not empty_ok:
            raise _HTTPError(400, "empty_body", f"the request carries no {kind}")
        return b"".join(chunks)

    def _top_k(self, value: Any) -> int:
        return self._int("top_k", value, self.settings.top_k, 1, self.settings.top_k_max)

    @staticmethod
    def _int(name: str, value: Any, default: int, low: int, high: int) -> int:
        if value is None:
            return default
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise _HTTPError(400, "bad_parameter", f"{name} must be an integer, got {value!r}") from None
        if not low <= number <= high:
            raise _HTTPError(400, "bad_parameter", f"{name} must be in [{low}, {high}], got {number}")
        return number

    def _shard(self, stream_id: str):
        if not valid_stream_id(stream_id):
            raise _HTTPError(404, "unknown_stream", f"no stream {stream_id[:64]!r}; open one with POST /v1/streams")
        # A stable hash (Python's hash() of a str differs between processes): every ingress replica agrees.
        digest = hashlib.blake2b(stream_id.encode(), digest_size=8).digest()
        return self.shards[int.from_bytes(digest, "big") % len(self.shards)]

    @api.get("/health")
    async def health(self) -> JSONResponse:
        replies = await asyncio.gather(self.clips.health.remote(), *(s.health.remote() for s in self.shards))
        return JSONResponse({"status": "ok", "model": os.path.basename(self.settings.model_source.rstrip("/")),
                             "clips": replies[0], "stream_shards": list(replies[1:])})

    @api.post("/v1/clips")
    async def clip(self, request: Request) -> JSONResponse:
        top_k = self._top_k(request.query_params.get("top_k"))
        name = request.query_params.get("name", "clip")[:200]  # echoed as the result's "path", never opened
        data = await self._body(request, kind="video")
        return _reply(await self.clips.clip.remote(data, top_k, name))

    @api.post("/v1/streams")
    async def create_stream(self, request: Request) -> JSONResponse:
        s = self.settings
        params: dict[str, Any] = {}
        if body := await self._body(request, kind="JSON object", empty_ok=True):
            try:
                params = json.loads(body)
            except ValueError:
                raise _HTTPError(400, "bad_parameter", "the body must be a JSON object (or empty)") from None
            if not isinstance(params, dict):
                raise _HTTPError(400, "bad_parameter", "the body must be a JSON object (or empty)")
        unknown = sorted(set(params) - {"every", "top_k", "idle_s", "fps"})
        if unknown:
            raise _HTTPError(400, "bad_parameter", f"unknown parameter(s) {', '.join(unknown)}; valid: every, "
                                                   f"fps, idle_s, top_k")
        every = self._int("every", params.get("every"), s.every_default, 1, s.every_max)
        top_k = self._top_k(params.get("top_k"))
        try:
            idle_s = float(params.get("idle_s", s.stream_idle_s))
            fps = float(params.get("fps", 25.0))
        except (TypeError, ValueError):
            raise _HTTPError(400, "bad_parameter", "idle_s and fps must be numbers") from None
        if not 0 < idle_s <= s.stream_idle_s or not 0 < fps <= 1000:
            raise _HTTPError(400, "bad_parameter", f"idle_s must be in (0, {s.stream_idle_s:g}] and fps in (0, "
                                                   f"1000]; got {idle_s:g}, {fps:g}")
        stream_id = new_stream_id()
        return _reply(await self._shard(stream_id).create_stream.remote(stream_id, every, top_k, idle_s, fps))

    @api.post("/v1/streams/{stream_id}/frames")
    async def push_frame(self, stream_id: str, request: Request) -> JSONResponse:
        shard = self._shard(stream_id)
        data = await self._body(request, kind="frame")
        content_type = request.headers.get("content-type", "image/jpeg")
        return _reply(await shard.push_frames.remote(stream_id, data, content_type))

    @api.get("/v1/streams/{stream_id}")
    async def stream_state(self, stream_id: str) -> JSONResponse:
        return _reply(await self._shard(stream_id).stream_state.remote(stream_id))

    @api.delete("/v1/streams/{stream_id}")
    async def end_stream(self, stream_id: str) -> JSONResponse:
        return _reply(await self._shard(stream_id).end_stream.remote(stream_id))


def _gpus_per_replica(settings: ServeSettings) -> float:
    if settings.gpus_per_replica != "auto":
        return float(settings.gpus_per_replica)
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def build_app(args: dict[str, Any]):
    """The Serve application for `settings` (a ServeSettings as a dict): the `import_path` of deploy/serve.yaml
    (`pipeline.serving.app:build_app`, its `args` are the settings)."""
    s = ServeSettings.from_dict(dict(args))
    actor = {"num_cpus": s.cpus_per_replica, "num_gpus": _gpus_per_replica(s)}
    # Serve's default of 5 ongoing requests per replica would cap a batch at 5: allow a full batch being computed
    # and the next one filling.
    ongoing = 4 * s.max_batch_size
    model = serve.deployment(ECOModel)
    clips = model.options(
        name="ECOClips", ray_actor_options=actor, max_ongoing_requests=ongoing,
        autoscaling_config={"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                            "target_ongoing_requests": s.target_ongoing_requests},
    ).bind(s.to_dict())
    shards = [model.options(name=f"ECOStreams{i}", num_replicas=1, ray_actor_options=actor,
                            max_ongoing_requests=max(ongoing, s.max_streams)).bind(s.to_dict())
              for i in range(s.stream_shards)]
    # The ingress only reads bodies and forwards them: no CPU reserved, many requests in flight.
    ingress = serve.deployment(ECOIngress)
    return ingress.options(name="ECOIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024,
                           ).bind(clips, shards, s.to_dict())


def _absolute(settings: ServeSettings) -> ServeSettings:
    """Local model paths made absolute: replicas do not run in the caller's working directory."""
    from pipeline import storage

    changes = {k: os.path.abspath(v) for k in ("checkpoint", "exported")
               if (v := getattr(settings, k)) and not storage.is_uri(v)}
    return settings.replace(**changes)


def start(settings: ServeSettings, *, name: str = "eco") -> str:
    """Start Serve's HTTP proxy on settings.host:port (Ray must be up) and deploy the application; its URL."""
    s = _absolute(settings)
    serve.start(http_options={"host": s.host, "port": s.port})
    serve.run(build_app(s.to_dict()), name=name, route_prefix="/", blocking=False)
    return f"http://{s.host}:{s.port}"


def serve_main(args) -> int:
    """`eco serve --checkpoint C | --exported F [settings]`: serves until Ctrl-C or SIGTERM."""
    import signal
    import threading

    from pipeline import raystart

    settings = from_args(args)
    raystart.ensure_ray(num_cpus=args.num_cpus)
    stop = threading.Event()
    # Explicit handlers: a process started in the background by a shell ignores SIGINT, and containers stop with
    # SIGTERM; both shut Serve down cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = start(settings)
        print(f"serving {settings.model_source} at {url}: POST /v1/clips, POST /v1/streams, GET /health "
              f"(docs/inference.md); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
    return 0
