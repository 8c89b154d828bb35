"""The Ray job that probes every candidate video (and optionally re-encodes it), each in a killable child process.

`probe_all(items)` runs one Ray Data actor pool over the candidates; every actor keeps an `IsolatedDecoder`
(pipeline.data.isolation) whose child runs `pipeline.data.decode.probe` bounded in time, so a file that hangs or
crashes decord costs its own row (reason timeout / crashed), not the job. With `normalize`, each accepted video is
re-encoded (pipeline.data.normalize) in a second killable child and the re-encoded file is probed instead. Results
come back as one dict per item: the probed facts, or a rejection reason and detail (codes: pipeline.data.decode).
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from pipeline import raystart, storage
from pipeline.progress import Progress

log = logging.getLogger(__name__)


class _Prober:
    """Ray Data actor: probes paths in a killable child process (pipeline.data.isolation.IsolatedDecoder), and with
    `normalize` re-encodes each accepted video into its "out_path" (in a second killable child) and probes that."""

    def __init__(self, timeout_s: float, probe_fn=None, normalize: dict[str, Any] | None = None,
                 decoder: str = "auto", accept_partial: bool = False):
        from pipeline.data.isolation import IsolatedDecoder

        self._backend = decoder
        # Passed only when set: injected probe functions (tests) need not know the option.
        self._probe_kwargs = {"decoder": decoder, **({"accept_partial": True} if accept_partial else {})}
        kwargs = {"probe_fn": probe_fn} if probe_fn is not None else {}
        self._decoder = IsolatedDecoder(timeout_s=timeout_s, max_clips_per_process=500, **kwargs)
        self._normalize = normalize
        self._encoder = None
        if normalize:
            # IsolatedDecoder runs any module-level function in its child: here the whole decode + re-encode, so
            # a file that hangs or crashes FFmpeg/decord is quarantined like one that fails the probe.
            self._encoder = IsolatedDecoder(timeout_s=normalize["timeout_s"], max_clips_per_process=100,
                                            decode_fn=_normalize_in_child)

    def _probe(self, path: str, row: dict[str, Any]) -> None:
        info = self._decoder.probe(path, **self._probe_kwargs)
        row.update(num_frames=int(info.num_frames), fps=float(info.fps), width=int(info.width),
                   height=int(info.height), duration=float(info.duration), codec=str(info.codec or ""),
                   backend=str(getattr(info, "backend", "") or "decord"), damaged=str(getattr(info, "damaged", "")))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.data.decode import DecodeError

        out: dict[str, list] = defaultdict(list)
        for path, size, out_path in zip(batch["path"], batch["size_bytes"], batch["out_path"]):
            path = str(path)
            row = {"num_frames": 0, "fps": 0.0, "width": 0, "height": 0, "duration": 0.0, "codec": "", "backend": "",
                   "damaged": "",
                   "size_bytes": int(size), "source_bytes": int(size), "reason": "", "detail": ""}
            try:
                self._probe(path, row)
                if row["size_bytes"] < 0:
                    row["size_bytes"] = row["source_bytes"] = _file_size(path)
                if self._encoder is not None:
                    n = self._normalize
                    self._encoder.decode(path, [0], dst=str(out_path), short_side=n["short_side"], gop=n["gop"])
                    self._probe(str(out_path), row)
                    row["size_bytes"] = _file_size(str(out_path))
            except DecodeError as e:
                row.update(reason=e.reason, detail=str(getattr(e, "detail", "") or e))
            except Exception as e:  # noqa: BLE001 - one bad file must not fail the whole prepare; recorded below
                row.update(reason="decode_error", detail=f"{type(e).__name__}: {e}")
            for key, value in row.items():
                out[key].append(value)
        return {"path": batch["path"], **{k: np.asarray(v) for k, v in out.items()}}

    def __del__(self):
        for decoder in (getattr(self, "_decoder", None), getattr(self, "_encoder", None)):
            if decoder is not None:
                decoder.close()


def _normalize_in_child(src: str, indices: np.ndarray, *, dst: str, short_side: int | None,
                        gop: int | None) -> np.ndarray:
    """Runs in the IsolatedDecoder child: pipeline.data.normalize.normalize_video(src -> dst); returns [ratio].

    `indices` is unused (the decode_fn call convention). A URI `dst` is written locally, then uploaded.
    """
    import tempfile

    from pipeline.data.normalize import normalize_video

    # No short side: keep the resolution (normalize_video never upscales), only re-encode with the GOP.
    side = short_side if short_side is not None else 1 << 30
    if not storage.is_uri(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        return np.asarray([normalize_video(src, dst, side, gop)])
    with tempfile.TemporaryDirectory(prefix="eco-normalize-") as tmp:
        local = os.path.join(tmp, "video.mp4")
        ratio = normalize_video(src, local, side, gop)
        fs, p = storage.resolve(dst)
        with open(local, "rb") as f, fs.open_output_stream(p) as g:
            g.write(f.read())
    return np.asarray([ratio])


def _file_size(path: str) -> int:
    fs, p = storage.resolve(path)
    return int(fs.get_file_info(p).size or 0)


def probe_all(items: list[dict[str, Any]], timeout_s: float, workers: int | None, probe_fn=None,
              normalize: dict[str, Any] | None = None, decoder: str = "auto",
              accept_partial: bool = False) -> list[dict[str, Any]]:
    """Probe every item ({"path", "size_bytes" (-1: unknown), "out_path" (the re-encoded file, with
    `normalize`)}) on Ray; one result dict per item, in no particular order (match them by "path")."""
    import ray

    raystart.ensure_ray()
    n = len(items)
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = max(1, min(workers, n))
    # Small blocks so that every actor gets work (one block is processed by one actor); a few per actor.
    rows_per_block = max(1, min(64, math.ceil(n / (workers * 4))))
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(n / rows_per_block)).map_batches(
        _Prober,
        fn_constructor_kwargs={"timeout_s": timeout_s, "probe_fn": probe_fn, "normalize": normalize,
                               "decoder": decoder, "accept_partial": accept_partial},
        batch_size=rows_per_block,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        runtime_env=storage.storage_runtime_env(),
    )
    results: list[dict[str, Any]] = []
    with Progress(n, desc="probe", unit="videos") as progress:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            results.extend(batch.to_pylist())
            progress.update(batch.num_rows)
    return results

