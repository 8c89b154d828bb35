"""`eco serve`: a real Ray Serve application on 127.0.0.1, real HTTP requests.

One application for the module (Serve start-up is the expensive part): the colour-task model of test_inference
exported to TorchScript (so the served model is an `eco export` file), two stream shards, small limits so that
each refusal is cheap to provoke. Predictions are compared with the PyTorch checkpoint through the library:
clips with `Predictor.predict` (what `eco predict` runs), streams with `run_online` on the same JPEG frames and
with `eco predict --online` on the video itself.
"""

from __future__ import annotations

import io
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline.serving.streams import StreamError, StreamTable
from tests.test_inference import COLOURS, _write_video, tiny_task  # noqa: F401 - the session fixture

requests = pytest.importorskip("requests")
pytest.importorskip("ray.serve", reason="ray[serve] (make setup installs it)")

MAX_BODY_MB = 0.5
MAX_CLIP_FRAMES = 16
MAX_FRAME_PIXELS = 200 * 200
MAX_STREAMS = 2  # per shard
MAX_FRAMES_PER_REQUEST = 8
# Each test's timeout includes the module's server start when it is the first to run: deploying 4 replicas (each a
# process importing torch) took over 120 s on this 2-core machine at a load average of 30.
SERVER_TIMEOUT_S = 420
SHARDS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tiny_task, ray_session, tmp_path_factory):  # noqa: F811
    from ray import serve

    from pipeline.inference.export import export_model
    from pipeline.serving.app import start
    from pipeline.serving.settings import ServeSettings

    exported = export_model(tiny_task["checkpoint"], tmp_path_factory.mktemp("serve") / "eco.pt", fmt="torchscript")
    settings = ServeSettings(exported=str(exported), port=_free_port(), max_body_mb=MAX_BODY_MB,
                             max_clip_frames=MAX_CLIP_FRAMES, max_frame_pixels=MAX_FRAME_PIXELS,
                             max_frames_per_request=MAX_FRAMES_PER_REQUEST,
                             max_streams=MAX_STREAMS, stream_shards=SHARDS, min_replicas=1, max_replicas=1,
                             gpus_per_replica="0", cpus_per_replica=1.0, decoders_per_replica=1,
                             stream_idle_s=120.0, max_batch_size=4)
    url = start(settings, name="eco-test")
    yield url
    serve.shutdown()


@pytest.mark.timeout(SERVER_TIMEOUT_S)
def test_health_names_every_model_deployment(server):
    reply = requests.get(f"{server}/health", timeout=60)
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "ok" and body["model"] == "eco.pt"
    assert body["clips"]["device"] == "cpu" and len(body["stream_shards"]) == SHARDS


@pytest.mark.timeout(SERVER_TIMEOUT_S)
def test_clips_give_eco_predicts_top_k_also_concurrently(server, tiny_task):
    from pipeline.inference import Predictor

    videos = [(str(p), label) for p, label in tiny_task["videos"].values()]
    with Predictor.from_checkpoint(tiny_task["checkpoint"], device="cpu") as predictor:
        want = {r.path: r for r in predictor.predict([p for p, _ in videos], top_k=2)}

    def post(path: str) -> requests.Response:
        with open(path, "rb") as f:
            return requests.post(f"{server}/v1/clips", params={"top_k": 2, "name": path}, data=f.read(), timeout=120)

    with ThreadPoolExecutor(len(videos)) as pool:  # concurrent requests: the replica may batch them
        replies = list(pool.map(post, [p for p, _ in videos]))
    for (path, label), reply in zip(videos, replies):
        assert reply.status_code == 200, reply.text
        doc = reply.json()
        # `eco predict --json`'s document: the preprocessing, and one result per video.
        assert doc["preprocessing"] == {"num_segments": 4, "short_side": 128, "crop_size": 112,
                                        "normalization": "imagenet"}
        (result,) = doc["results"]
        assert result["path"] == path and [t["label"] for t in result["top_k"]] == list(want[path].labels)
        assert result["top_k"][0]["label"] == label
        assert [t["label_id"] for t in result["top_k"]] == list(want[path].label_ids)
        np.testing.assert_allclose([t["prob"] for t in result["top_k"]], want[path].probs, atol=1e-5)
    health = requests.get(f"{server}/health", timeout=60).json()["clips"]
    assert health["batched_clips"] >= len(videos) and 1 <= health["batches"] <= health["batched_clips"]


@pytest.mark.timeout(SERVER_TIMEOUT_S)
def test_stream_matches_eco_predict_online(server, tiny_task, tmp_path):
    from pipeline.inference import Predictor
    from pipeline.inference.online import online_predict, run_online
    from tests.videos import reference_frames

    video = _write_video(tmp_path / "blue_long.mp4", COLOURS["blue"], 22, seed=7, fps=10)
    frames = reference_frames(video)  # (22, 128, 144, 3) as FFmpeg decodes them
    jpegs = [_jpeg(f) for f in frames]
    created = requests.post(f"{server}/v1/streams", json={"every": 4, "top_k": 3, "fps": 10}, timeout=60)
    assert created.status_code == 201, created.text
    stream = created.json()
    sid = stream["stream_id"]
    assert (stream["every"], stream["memory"], stream["frames"], stream["prediction"]) == (4, 4, 0, None)

    # The first frames one per request (a JPEG body), the rest several per request (multipart, as curl -F sends).
    served, sent = [], 0
    for chunk in [jpegs[i:i + 1] for i in range(6)] + [jpegs[6:11], jpegs[11:19], jpegs[19:22]]:
        reply = _post_frames(f"{server}/v1/streams/{sid}/frames", chunk)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        sent += len(chunk)
        assert body["frames"] == sent and body["updated"] == bool(body["new_updates"])
        if len(chunk) == 1:
            assert body["updated"] == (sent % 4 == 0)
        served += body["new_updates"]
        if body["updated"]:
            assert body["prediction"] == body["new_updates"][-1]
    state = requests.get(f"{server}/v1/streams/{sid}", timeout=60).json()
    assert state["queued"] == 2 and state["updates"] == 5
    ended = requests.delete(f"{server}/v1/streams/{sid}", timeout=120)
    assert ended.status_code == 200, ended.text
    served.append(ended.json()["prediction"])
    assert ended.json()["final"] == served[-1]["top_k"]
    assert requests.get(f"{server}/v1/streams/{sid}", timeout=60).status_code == 404  # ended streams are gone

    from PIL import Image

    decoded = [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs]
    with Predictor.from_checkpoint(tiny_task["checkpoint"], device="cpu") as predictor:
        same_frames = run_online(decoded, predictor, every=4, top_k=3, fps=10)  # the library on the same JPEGs
        from_video = online_predict(video, predictor, every=4, top_k=3)  # `eco predict --online`
    assert [u["frame"] for u in served] == [u.frame for u in same_frames.updates] == [3, 7, 11, 15, 19, 21]
    assert [u.frame for u in from_video.updates] == [3, 7, 11, 15, 19, 21]
    for got, want, offline in zip(served, same_frames.updates, from_video.updates):
        assert got["memory_frames"] == list(want.memory) == list(offline.memory)
        assert [t["label"] for t in got["top_k"]] == [n for n, _ in want.top_k]
        np.testing.assert_allclose([t["prob"] for t in got["top_k"]], [p for _, p in want.top_k], atol=1e-5)
        np.testing.assert_allclose([t["prob"] for t in got["instant_top_k"]], [p for _, p in want.instant_top_k],
                                   atol=1e-5)
        # The video decoded directly, without the JPEG round trip: the same classes, probabilities close.
        assert got["top_k"][0]["label"] == offline.top_k[0][0] == "blue"
        assert abs(got["top_k"][0]["prob"] - offline.top_k[0][1]) < 0.02
    assert served[-1]["top_k"][0]["label"] == from_video.final[0][0]


def _post_frames(url: str, jpegs: list[bytes]) -> requests.Response:
    if len(jpegs) == 1:
        return requests.post(url, data=jpegs[0], headers={"Content-Type": "image/jpeg"}, timeout=120)
    return requests.post(url, files=[(f"f{i}", (f"{i}.jpg", j, "image/jpeg")) for i, j in enumerate(jpegs)],
                         timeout=120)


def _error(reply: requests.Response) -> tuple[int, str, str]:
    body = reply.json()
    return reply.status_code, body["error"], body["detail"]


@pytest.mark.timeout(SERVER_TIMEOUT_S)
def test_bad_inputs_get_clear_4xx(server, tiny_task, tmp_path):
    clips = f"{server}/v1/clips"
    status, reason, detail = _error(requests.post(clips, data=b"this is a text file, not a video\n" * 4, timeout=60))
    assert (status, reason) == (415, "not_a_video") and "text" in detail
    # A pickle is bytes like any other: probed as a video, refused, never unpickled.
    status, reason, _ = _error(requests.post(clips, data=pickle.dumps({"path": "/etc/passwd"}), timeout=60))
    assert (status, reason) == (415, "not_a_video")
    status, reason, detail = _error(requests.post(clips, data=b"\0" * int(MAX_BODY_MB * 2**20 + 1), timeout=60))
    assert (status, reason) == (413, "body_too_large") and str(int(MAX_BODY_MB * 2**20)) in detail
    long = _write_video(tmp_path / "long.mp4", COLOURS["red"], MAX_CLIP_FRAMES + 4, seed=3)
    status, reason, detail = _error(requests.post(clips, data=long.read_bytes(), timeout=60))
    assert (status, reason) == (413, "too_many_frames") and f"{MAX_CLIP_FRAMES + 4} frames" in detail
    assert _error(requests.post(clips, data=b"", timeout=60))[:2] == (400, "empty_body")
    assert _error(requests.post(clips, params={"top_k": "many"}, data=b"x", timeout=60))[:2] == (400, "bad_parameter")

    streams = f"{server}/v1/streams"
    status, reason, detail = _error(requests.post(streams, json={"every": 0}, timeout=60))
    assert (status, reason) == (400, "bad_parameter") and "every" in detail
    status, reason, detail = _error(requests.post(streams, json={"memory_path": "/tmp/x"}, timeout=60))
    assert (status, reason) == (400, "bad_parameter") and "memory_path" in detail
    tiny = _jpeg(np.zeros((8, 8, 3), np.uint8))
    for sid in ("0" * 32, "not-an-id"):
        status, reason, _ = _error(requests.post(f"{streams}/{sid}/frames", data=tiny, timeout=60))
        assert (status, reason) == (404, "unknown_stream"), sid
    status, reason, _ = _error(requests.post(f"{streams}/..%2F..%2Fetc%2Fpasswd/frames", data=tiny, timeout=60))
    assert (status, reason) == (404, "not_found")  # no route: ids are never paths

    sid = requests.post(streams, timeout=60).json()["stream_id"]
    frames = f"{streams}/{sid}/frames"
    status, reason, detail = _error(requests.post(frames, data=b"GIF89a not a jpeg", timeout=60))
    assert (status, reason) == (415, "not_a_jpeg") and "not a JPEG" in detail
    status, reason, detail = _error(requests.post(frames, data=_jpeg(np.zeros((300, 300, 3), np.uint8)), timeout=60))
    assert (status, reason) == (413, "frame_too_large") and "300x300" in detail
    status, reason, detail = _error(_post_frames(frames, [tiny] * (MAX_FRAMES_PER_REQUEST + 1)))
    assert (status, reason) == (413, "too_many_frames") and f"more than {MAX_FRAMES_PER_REQUEST} frames" in detail
    status, reason, _ = _error(requests.post(frames, data=tiny, headers={"Content-Type": "multipart/mixed"},
                                             timeout=60))
    assert (status, reason) == (400, "bad_multipart")
    assert requests.get(f"{streams}/{sid}", timeout=60).json()["frames"] == 0  # refused frames were not queued

    # Open streams are bounded per shard: create until refused (at most every shard full + 1).
    opened = [sid]
    for _ in range(SHARDS * MAX_STREAMS):
        reply = requests.post(streams, timeout=60)
        if reply.status_code != 201:
            break
        opened.append(reply.json()["stream_id"])
    status, reason, detail = _error(reply)
    assert (status, reason) == (429, "too_many_streams") and f"{MAX_STREAMS} streams" in detail
    # Each stream lives on the shard its id hashes to, and every request about it reaches that shard.
    shards = [h["open_streams"] for h in requests.get(f"{server}/health", timeout=60).json()["stream_shards"]]
    assert sum(shards) == len(opened) and max(shards) == MAX_STREAMS
    for sid in opened:
        assert requests.post(f"{streams}/{sid}/frames", data=tiny, timeout=60).json()["frames"] == 1
    for sid in opened:
        assert requests.delete(f"{streams}/{sid}", timeout=60).status_code == 200


@pytest.mark.timeout(SERVER_TIMEOUT_S)
def test_idle_stream_expires(server):
    streams = f"{server}/v1/streams"
    assert _error(requests.post(streams, json={"idle_s": 1e6}, timeout=60))[:2] == (400, "bad_parameter")
    sid = requests.post(streams, json={"idle_s": 0.5}, timeout=60).json()["stream_id"]
    assert requests.post(f"{streams}/{sid}/frames", data=_jpeg(np.zeros((16, 16, 3), np.uint8)),
                         timeout=60).status_code == 200
    # Looking at a stream does not keep it alive: poll until the server says it expired (bounded).
    deadline = time.monotonic() + 60
    while (reply := requests.get(f"{streams}/{sid}", timeout=60)).status_code == 200:
        assert time.monotonic() < deadline, "the stream never expired"
        time.sleep(0.1)
    status, reason, detail = _error(reply)
    assert (status, reason) == (404, "expired_stream") and "0.5 s" in detail
    status, reason, _ = _error(requests.post(f"{streams}/{sid}/frames", data=_jpeg(np.zeros((16, 16, 3), np.uint8)),
                                             timeout=60))
    assert (status, reason) == (404, "expired_stream")


@pytest.mark.timeout(10)
def test_stream_table_expiry_and_limits_with_a_fake_clock():
    now = [0.0]
    table = StreamTable(max_streams=2, clock=lambda: now[0])
    table.create("a", "state-a", idle_s=10)
    table.create("b", "state-b", idle_s=5)
    with pytest.raises(StreamError, match="2 streams are open") as full:
        table.create("c", "state-c", idle_s=5)
    assert full.value.status == 429
    now[0] = 4.0
    assert table.get("b").state == "state-b"  # used at t=4: alive until t=9
    now[0] = 8.0
    assert table.get("b", touch=False).state == "state-b"
    now[0] = 10.5  # a expired at 10 (unused since 0), b at 9
    assert table.sweep() == 2 and len(table) == 0
    for sid in ("a", "b"):
        with pytest.raises(StreamError, match="expired after") as gone:
            table.get(sid)
        assert (gone.value.status, gone.value.reason) == (404, "expired_stream")
    with pytest.raises(StreamError, match="no stream zzz") as unknown:
        table.get("zzz")
    assert unknown.value.reason == "unknown_stream"
    table.create("c", "state-c", idle_s=5)  # room again


@pytest.mark.timeout(30)
def test_serve_config_is_valid_for_serve_deploy():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from pipeline.serving.settings import ServeSettings

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(config)
    (app,) = schema.applications
    assert app.import_path == "pipeline.serving.app:build_app"
    settings = ServeSettings.from_dict(app.args)  # every key is a setting
    assert settings.checkpoint.startswith("s3://") and settings.gpus_per_replica == "auto"
    assert [d.name for d in app.deployments] == ["ECOClips"]
    with pytest.raises(ValueError, match="unknown key.*max_batch"):
        ServeSettings.from_dict({**app.args, "max_batch": 4})
