"""Video manifests: a source of videos -> probed Parquet manifest, label map and quarantine.

`prepare(source, out_dir)` lists the videos of a source, probes every one of them in parallel on Ray (each probe in
a killable child process, bounded in time), and writes to `out_dir` (a local directory or any URI pyarrow's
filesystems understand: s3://, gs://, ...):

  manifest.parquet    one row per accepted video, schema `MANIFEST_SCHEMA`, sorted by (split, label, video_id)
  labels.json         JSON list of class names; `label` in the manifest indexes it
  quarantine.parquet  rejected files: path, reason (a short stable code, see below), detail
  summary.json        counts (candidates = accepted + rejected, rejected by reason, per split, per decode backend)
                      and what was written where

The label map is sorted by class name (Python string order), except where the source defines the numbering: the
UCF101 `classInd.txt` (1-based there, 0-based here), integer labels of a table, or an explicit `labels=` list
given to a source (e.g. `pipeline.labels.kinetics400_labels()` to keep the official Kinetics-400 ids).

With `normalize_short_side` / `normalize_gop`, accepted videos are re-encoded into `videos_normalized/` (see
pipeline.data.normalize for why) and the manifest describes the re-encoded files.

Sources without a split get a stratified train/val split: per class, `round(n * val_fraction)` videos (at least
one when the class has two or more, never all of them) go to "val", chosen by a generator seeded from
(seed, class name), so the split is reproducible and does not change when other classes are added.

Rejection reasons: missing (also a dangling symbolic link), unreadable (permission denied, I/O error),
is_directory, empty_file, not_a_video (also a still image), no_video_stream, too_small, truncated, corrupt (damage
met while decoding; with accept_partial such files are accepted for their clean head, see `prepare`), decode_error,
timeout, crashed (from the probe, see pipeline.data.decode), unknown_label (a label that is not in the label map)
and duplicate (the same video listed twice).

This module owns the manifest format (schema, file names, `ManifestError`), `prepare` and the readers. The sources
(folder, Kinetics, UCF101, table -> candidate videos) are in pipeline.data.sources, the Ray probe job in
pipeline.data.probe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.probe import probe_all

log = logging.getLogger(__name__)
join = storage.join
is_uri = storage.is_uri

MANIFEST_SCHEMA = pa.schema([
    ("video_id", pa.string()),  # stable unique id; seeds the TSN sampling (pipeline.data.sampling.clip_rng)
    ("path", pa.string()),  # absolute local path or URI
    ("label", pa.int32()),  # index into labels.json
    ("label_name", pa.string()),
    ("split", pa.string()),  # "train" / "val" / "test"
    ("num_frames", pa.int32()),  # decodable frames (probed, not the container's claim)
    ("fps", pa.float32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("duration", pa.float32()),  # seconds
    ("codec", pa.string()),
    ("size_bytes", pa.int64()),
    # The decode backend the probe chose ("decord" or "pyav", pipeline.data.decode): training decodes with it.
    ("backend", pa.string()),
    # "" for a whole file; "corrupt" / "truncated" for a damaged file accepted with accept_partial, whose
    # num_frames counts only the frames that decode cleanly before the damage.
    ("damaged", pa.string()),
])
# Columns a manifest may lack (written before they existed), with the value they read as: "auto" decodes with
# decord and falls back to PyAV where decord cannot open the file; a manifest from before the damage check
# claims nothing about damage ("").
OPTIONAL_COLUMNS = {"backend": "auto", "damaged": ""}

QUARANTINE_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())])

MANIFEST_FILE = "manifest.parquet"
LABELS_FILE = "labels.json"
QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"
NORMALIZED_DIR = "videos_normalized"
NORMALIZE_TIMEOUT_FACTOR = 5

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A source, manifest or label file is invalid; the message names the file and the field."""


# --------------------------------------------------------------------------------------------------------------
# Files: through pipeline.storage, with its errors as ManifestError


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI (s3://bucket/key, gs://..., file://...)."""
    try:
        return storage.resolve(path)
    except storage.StorageError as e:
        raise ManifestError(str(e)) from e


def read_text(path: str) -> str:
    """A UTF-8 text file (a BOM is dropped), local or a URI; ManifestError names a missing or non-text file."""
    try:
        return storage.read_bytes(path).decode("utf-8-sig")
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text: {e}") from e


def _write_bytes(path: str, data: bytes) -> None:
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:
        f.write(data)


def check_label_names(names: Any, where: str) -> list[str]:
    """`names` if it is a non-empty list of distinct, non-empty class names; else ManifestError naming `where`."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ManifestError(f"{where}: expected a list of non-empty class names")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ManifestError(f"{where}: duplicate class names {dup[:5]}")
    if not names:
        raise ManifestError(f"{where}: no class names")
    return names


def normalized_path(out_dir: str, video_id: str) -> str:
    """out_dir/videos_normalized/<video_id without scheme, leading "/" or "..", extension .mp4>."""
    rel = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", video_id).replace("\\", "/").lstrip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".", "..")] or ["video"]
    parts[-1] = posixpath.splitext(parts[-1])[0] + ".mp4"
    return join(out_dir, NORMALIZED_DIR, *parts)


# --------------------------------------------------------------------------------------------------------------
# prepare


@dataclass
class PrepareSummary:
    out_dir: str
    accepted: int
    rejected: dict[str, int]
    splits: dict[str, int]
    num_classes: int
    files: dict[str, str]
    seconds: float = 0.0
    normalized: dict[str, Any] | None = None
    # Every video the source listed: accepted + sum(rejected.values()).
    candidates: int = 0
    # Accepted videos per decode backend ({"decord": n, "pyav": m}).
    backends: dict[str, int] = field(default_factory=dict)
    # Damaged videos accepted for their clean head (accept_partial), by damage ({"truncated": n, ...}).
    damaged: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        total_rejected = sum(self.rejected.values())
        lines = [f"prepared {self.accepted} videos in {self.num_classes} classes "
                 f"({total_rejected} rejected) in {self.seconds:.1f} s"]
        if self.backends:
            lines.append("  decoders   " + "  ".join(f"{k}: {v}" for k, v in sorted(self.backends.items())))
        lines.append("  splits     " + ("  ".join(f"{k}: {v}" for k, v in sorted(self.splits.items())) or "-"))
        if total_rejected:
            lines.append("  rejected   " + "  ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items())))
        if self.damaged:
            lines.append("  damaged    " + "  ".join(f"{k}: {v}" for k, v in sorted(self.damaged.items()))
                         + " (accepted: only the frames before the damage)")
        if self.normalized:
            n = self.normalized
            lines.append(f"  normalized {n['videos']} videos (short side {n['short_side'] or 'kept'}, gop "
                         f"{n['gop'] or 'x264 default'}): {n['bytes']:,} bytes, x{n['size_ratio']:.2f} the source")
        for name, path in self.files.items():
            lines.append(f"  {name:<10} {path}")
        return "\n".join(lines)


def _stable_seed(*parts: Any) -> int:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def stratified_split(video_ids_by_class: dict[str, list[str]], val_fraction: float, seed: int) -> dict[str, str]:
    """video_id -> "train"/"val": per class round(n * val_fraction) to val (>= 1 if n >= 2, never all)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ManifestError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = {}
    for name, ids in video_ids_by_class.items():
        ids = sorted(ids)
        n_val = round(len(ids) * val_fraction)
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        order = np.random.default_rng(_stable_seed(seed, name)).permutation(len(ids))
        val = {ids[i] for i in order[:n_val]}
        out.update({v: ("val" if v in val else "train") for v in ids})
    return out


def prepare(source: Any, out_dir: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0,
            probe_timeout_s: float = 120.0, normalize_short_side: int | None = None,
            normalize_gop: int | None = None, probe_workers: int | None = None,
            probe_fn: Callable | None = None, decoder: str = "auto", accept_partial: bool = False) -> PrepareSummary:
    """List, probe (on Ray) and write the manifest, label map, quarantine and summary of `source` to `out_dir`.

    `source` is a pipeline.data.sources FolderSource, KineticsSource, UCF101Source or TableSource (anything with
    `.list() -> Listing`).
    Starts a local Ray instance if none is running. See the module docstring for the files and the split.
    `probe_workers`: probe actors (default: the cluster's CPUs). `probe_fn` replaces pipeline.data.decode.probe in
    the killable probe process (a module-level function; tests inject hanging or crashing probes).
    `normalize_short_side` / `normalize_gop`: re-encode every accepted video as H.264 with this short side (never
    upscaled) and keyframe interval (pipeline.data.normalize) into out_dir/videos_normalized/<video_id>.mp4; the
    manifest then points at (and describes) those files, and the summary records the size ratio.
    `decoder`: the probe's decode backend, "auto" (decord, PyAV for files decord cannot decode), "decord" or
    "pyav" (pipeline.data.decode); the manifest's `backend` column records the one each video was probed with.
    `accept_partial`: a damaged video (reason corrupt or truncated) is accepted with num_frames = the frames that
    decode cleanly before the damage and its `damaged` column set, instead of quarantined; the summary counts them.
    """
    normalize = None
    if normalize_short_side is not None or normalize_gop is not None:
        if normalize_short_side is not None and normalize_short_side < 16:
            raise ManifestError(f"normalize_short_side must be >= 16, got {normalize_short_side}")
        if normalize_gop is not None and normalize_gop < 1:
            raise ManifestError(f"normalize_gop must be >= 1, got {normalize_gop}")
        # A re-encode decodes and encodes the whole video: allow it several probe timeouts.
        normalize = {"short_side": normalize_short_side, "gop": normalize_gop,
                     "timeout_s": NORMALIZE_TIMEOUT_FACTOR * probe_timeout_s}
    from pipeline.data.decode import BACKENDS

    if decoder not in BACKENDS:
        raise ManifestError(f"decoder must be one of {', '.join(BACKENDS)}, got {decoder!r}")
    if probe_timeout_s <= 0:
        raise ManifestError(f"probe_timeout_s must be > 0, got {probe_timeout_s}")
    if not 0.0 <= val_fraction < 1.0:
        raise ManifestError(f"val_fraction must be in [0, 1), got {val_fraction}")
    started = time.monotonic()
    out_dir = str(out_dir)
    listing = source.list()
    rejected: list[dict[str, str]] = list(listing.rejected)

    label_names = listing.label_names or sorted({c.label_name for c in listing.candidates})
    index = {name: i for i, name in enumerate(label_names)}
    candidates, seen = [], {}
    for c in listing.candidates:
        if c.label_name not in index:
            rejected.append({"path": c.path, "reason": "unknown_label",
                             "detail": f"label {c.label_name!r} is not one of the {len(label_names)} classes"})
        elif c.video_id in seen:
            rejected.append({"path": c.path, "reason": "duplicate",
                             "detail": f"video_id {c.video_id!r} already listed as {seen[c.video_id]}"})
        else:
            seen[c.video_id] = c.path
            candidates.append(c)
    if not candidates:
        raise ManifestError(f"{_source_name(source)}: no videos to probe ({len(rejected)} rejected before probing)")

    log.info("probing %d videos from %s", len(candidates), _source_name(source))
    items = [{"path": c.path, "size_bytes": -1 if c.size_bytes is None else c.size_bytes,
              "out_path": normalized_path(out_dir, c.video_id) if normalize else ""} for c in candidates]
    probes = {r["path"]: r for r in probe_all(items, probe_timeout_s, probe_workers, probe_fn, normalize, decoder,
                                                accept_partial)}
    accepted: list[tuple[Any, dict[str, Any]]] = []  # (sources.Candidate, probe result)
    for c in candidates:
        r = probes[c.path]
        if r["reason"]:
            rejected.append({"path": c.path, "reason": r["reason"], "detail": r["detail"]})
        else:
            accepted.append((c, r))

    # Videos the source gave no split: stratified per class, among the accepted ones (the proportions hold for
    # what can be trained on).
    unsplit: dict[str, list[str]] = defaultdict(list)
    for c, _ in accepted:
        if c.split is None:
            unsplit[c.label_name].append(c.video_id)
    assigned = stratified_split(unsplit, val_fraction, seed) if unsplit else {}

    rows = [{"video_id": c.video_id, "path": normalized_path(out_dir, c.video_id) if normalize else c.path,
             "label": index[c.label_name], "label_name": c.label_name,
             "split": c.split or assigned[c.video_id], "num_frames": r["num_frames"], "fps": r["fps"],
             "width": r["width"], "height": r["height"], "duration": r["duration"], "codec": r["codec"],
             "size_bytes": r["size_bytes"], "backend": r["backend"], "damaged": r["damaged"]} for c, r in accepted]
    rows.sort(key=lambda r: (SPLITS.index(r["split"]), r["label"], r["video_id"]))
    manifest = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    rejected.sort(key=lambda r: r["path"])
    quarantine = pa.Table.from_pylist(rejected, schema=QUARANTINE_SCHEMA)

    files = {"manifest": join(out_dir, MANIFEST_FILE), "labels": join(out_dir, LABELS_FILE),
             "quarantine": join(out_dir, QUARANTINE_FILE), "summary": join(out_dir, SUMMARY_FILE)}
    normalized = None
    if normalize:
        files["videos"] = join(out_dir, NORMALIZED_DIR)
        source_bytes = sum(r["source_bytes"] for _, r in accepted)
        normalized = {"videos": len(accepted), "short_side": normalize_short_side, "gop": normalize_gop,
                      "source_bytes": source_bytes, "bytes": sum(r["size_bytes"] for _, r in accepted),
                      "size_ratio": sum(r["size_bytes"] for _, r in accepted) / max(1, source_bytes)}
    fs, base = resolve(out_dir)
    fs.create_dir(base, recursive=True)
    pq.write_table(manifest, resolve(files["manifest"])[1], filesystem=fs)
    pq.write_table(quarantine, resolve(files["quarantine"])[1], filesystem=fs)
    _write_bytes(files["labels"], json.dumps(label_names, indent=1).encode())
    summary = PrepareSummary(
        out_dir=out_dir, accepted=len(rows), rejected=dict(sorted(Counter(r["reason"] for r in rejected).items())),
        splits=dict(sorted(Counter(r["split"] for r in rows).items())), num_classes=len(label_names), files=files,
        seconds=round(time.monotonic() - started, 2), normalized=normalized,
        candidates=len(listing.candidates) + len(listing.rejected),
        backends=dict(sorted(Counter(r["backend"] for r in rows).items())),
        damaged=dict(sorted(Counter(r["damaged"] for r in rows if r["damaged"]).items())))
    _write_bytes(files["summary"], json.dumps(summary.to_dict(), indent=2).encode())
    return summary  # the caller prints it: `eco prepare` once


def _source_name(source: Any) -> str:
    for attr in ("root", "annotations_csv", "splits_dir", "path"):
        if hasattr(source, attr):
            return f"{type(source).__name__}({getattr(source, attr)})"
    return type(source).__name__


# --------------------------------------------------------------------------------------------------------------
# Reading


def manifest_file(path_or_dir: str | os.PathLike) -> str:
    """The manifest Parquet file of a prepare output directory, or `path_or_dir` itself if it is a file."""
    path = str(path_or_dir)
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.File:
        return path
    if info.type == pafs.FileType.Directory:
        candidate = join(path, MANIFEST_FILE)
        if fs.get_file_info(resolve(candidate)[1]).type == pafs.FileType.File:
            return candidate
        raise ManifestError(f"{path}: no {MANIFEST_FILE} in this directory (run `eco prepare` first)")
    raise ManifestError(f"{path}: manifest not found (expected a directory written by `eco prepare` or a "
                        f"{MANIFEST_FILE} file)")


def check_manifest_schema(schema: pa.Schema, where: str) -> None:
    missing = [f.name for f in MANIFEST_SCHEMA if f.name not in schema.names and f.name not in OPTIONAL_COLUMNS]
    if missing:
        raise ManifestError(f"{where}: missing manifest column(s) {', '.join(missing)}; expected "
                            f"{', '.join(MANIFEST_SCHEMA.names)}")


def with_optional_columns(table: pa.Table) -> pa.Table:
    """`table` with the OPTIONAL_COLUMNS it lacks added, and their nulls filled, with their default values."""
    import pyarrow.compute as pc

    for name, default in OPTIONAL_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([default] * table.num_rows, pa.string()))
        elif table.column(name).null_count:
            i = table.column_names.index(name)
            table = table.set_column(i, name, pc.fill_null(table.column(name), default))
    return table


def read_manifest(path_or_dir: str | os.PathLike, split: str | None = None) -> pa.Table:
    """The manifest (columns and types of MANIFEST_SCHEMA), optionally only the rows of `split`."""
    path = manifest_file(path_or_dir)
    fs, p = resolve(path)
    try:
        table = pq.read_table(p, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{path}: not a readable Parquet manifest: {e}") from e
    check_manifest_schema(table.schema, path)
    table = with_optional_columns(table)
    try:
        table = table.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ManifestError(f"{path}: manifest columns do not have the manifest types: {e}") from e
    if split is not None:
        import pyarrow.compute as pc

        present = Counter(table.column("split").to_pylist())
        table = table.filter(pc.equal(table.column("split"), split))
        if table.num_rows == 0:
            raise ManifestError(f"{path}: no rows with split {split!r} (splits present: "
                                f"{', '.join(f'{k}: {v}' for k, v in sorted(present.items())) or 'none'})")
    return table


def read_labels(path_or_dir: str | os.PathLike) -> list[str]:
    """The class names of labels.json (given the file, its directory, or the manifest next to it)."""
    path = str(path_or_dir)
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        path = join(path, LABELS_FILE)
    elif info.type == pafs.FileType.File and not path.endswith(".json"):
        path = (posixpath.dirname(path) if is_uri(path) else os.path.dirname(os.path.abspath(path)))
        path = join(path, LABELS_FILE)
    try:
        names = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    return check_label_names(names, path)
