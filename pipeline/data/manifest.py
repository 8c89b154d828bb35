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

Rejection reasons: missing (also a dangling symbolic link), unreadable (permission denied, I/O error), is_directory, empty_file, not_a_video, no_video_stream, too_small, truncated,
decode_error, timeout, crashed (from the probe, see pipeline.data.decode), unknown_label (a label that is not in
the label map) and duplicate (the same video listed twice).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage

log = logging.getLogger(__name__)

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
])
# Columns a manifest may lack (written before they existed), with the value they read as: "auto" decodes with
# decord and falls back to PyAV where decord cannot open the file.
OPTIONAL_COLUMNS = {"backend": "auto"}

QUARANTINE_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())])

MANIFEST_FILE = "manifest.parquet"
LABELS_FILE = "labels.json"
QUARANTINE_FILE = "quarantine.parquet"
SUMMARY_FILE = "summary.json"
NORMALIZED_DIR = "videos_normalized"
NORMALIZE_TIMEOUT_FACTOR = 5

SPLITS = ("train", "val", "test")
# Spellings found in public annotation files (Kinetics uses "validate" in some releases).
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test", "testing": "test"}

# Files with other extensions (README, .json, .DS_Store, ...) in a video tree are not candidates. A text file
# renamed to .mp4 is a candidate and ends up quarantined as not_a_video.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ogv", ".ts"})


class ManifestError(ValueError):
    """A source, manifest or label file is invalid; the message names the file and the field."""


# --------------------------------------------------------------------------------------------------------------
# Paths and filesystems


# One storage layer (pipeline.storage); these names stay importable from here for the data modules.
is_uri = storage.is_uri
join = storage.join


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI (s3://bucket/key, gs://..., file://...)."""
    try:
        return storage.resolve(path)
    except storage.StorageError as e:
        raise ManifestError(str(e)) from e


def _read_text(path: str) -> str:
    fs, p = resolve(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: file not found") from e
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text: {e}") from e


def _write_bytes(path: str, data: bytes) -> None:
    fs, p = resolve(path)
    with fs.open_output_stream(p) as f:
        f.write(data)


def _list_files(root: str) -> list[tuple[str, int]]:
    """(relative POSIX path, size) of every file under `root`, sorted; hidden files and folders skipped.

    Dangling symbolic links (local roots) are listed too, with size 0: the probe quarantines them as `missing`
    instead of their disappearing without a trace (pyarrow's listing leaves them out).
    """
    fs, base = resolve(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise ManifestError(f"{root}: directory not found")
    if info.type != pafs.FileType.Directory:
        raise ManifestError(f"{root}: expected a directory of videos, found a file")
    files = []
    prefix = base.rstrip("/") + "/"
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(prefix):] if entry.path.startswith(prefix) else posixpath.relpath(entry.path, base)
        rel = rel.replace(os.sep, "/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        files.append((rel, int(entry.size or 0)))
    if isinstance(fs, pafs.LocalFileSystem):
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if not name.startswith(".") and os.path.islink(full) and not os.path.exists(full):
                    files.append((os.path.relpath(full, base).replace(os.sep, "/"), 0))
    files.sort()
    return files


def _is_video_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS


# --------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class Candidate:
    """A video a source lists, before probing."""

    video_id: str
    path: str
    label_name: str
    split: str | None = None  # None: assigned by the stratified split
    size_bytes: int | None = None  # known from a directory listing; otherwise read during the probe


@dataclass
class Listing:
    candidates: list[Candidate]
    # Rejected before probing (a listed clip that is not there, ...): dicts with path, reason, detail.
    rejected: list[dict[str, str]] = field(default_factory=list)
    # The label map when the source defines it (UCF101 classInd, integer labels, labels=); None: sorted names.
    label_names: list[str] | None = None


def _labels_arg(labels: Sequence[str] | str | None) -> list[str] | None:
    """`labels=` of a source: a list of names, or a path to labels.json / a text file with one name per line."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        text = _read_text(str(labels))
        names = json.loads(text) if str(labels).endswith(".json") else [ln.strip() for ln in text.splitlines()
                                                                        if ln.strip()]
        return _check_label_names(names, str(labels))
    return _check_label_names(list(labels), "labels=")


def _check_label_names(names: Any, where: str) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ManifestError(f"{where}: expected a list of non-empty class names")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ManifestError(f"{where}: duplicate class names {dup[:5]}")
    if not names:
        raise ManifestError(f"{where}: no class names")
    return names


def _split_value(value: str | None, where: str) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ManifestError(f"{where}: unknown split {value!r}; valid: {', '.join(sorted(_SPLIT_ALIASES))}")
    return _SPLIT_ALIASES[key]


class FolderSource:
    """A class-per-folder tree: `root/<class>/<video>` (UCF101, HMDB51, the Kinetics downloaders).

    Videos may sit deeper below their class folder. When every top-level folder is a split name
    (`root/train/<class>/...`, `root/val/<class>/...`) the split comes from it. `video_id` is the path relative to
    `root`. Files directly in `root` and files without a video extension are skipped (logged).
    """

    def __init__(self, root: str | os.PathLike, *, labels: Sequence[str] | str | None = None):
        self.root = str(root)
        self.labels = labels

    def list(self) -> Listing:
        files = _list_files(self.root)
        top = {rel.split("/", 1)[0] for rel, _ in files if "/" in rel}
        by_split = bool(top) and all(t.lower() in _SPLIT_ALIASES for t in top)
        candidates, skipped = [], 0
        for rel, size in files:
            parts = rel.split("/")
            depth = 3 if by_split else 2
            if len(parts) < depth or not _is_video_name(rel):
                skipped += 1
                continue
            split = _split_value(parts[0], f"{self.root}/{parts[0]}") if by_split else None
            label = parts[1] if by_split else parts[0]
            candidates.append(Candidate(rel, join(self.root, rel), label, split, size))
        if skipped:
            log.info("%s: skipped %d files that are not <class>/<video> with a video extension", self.root, skipped)
        if not candidates:
            raise ManifestError(f"{self.root}: no videos found (expected {self.root}/<class>/<video>, extensions "
                                f"{', '.join(sorted(VIDEO_EXTENSIONS))})")
        return Listing(candidates, label_names=_labels_arg(self.labels))


class KineticsSource:
    """Kinetics annotations (`label,youtube_id,time_start,time_end[,split]`) + a directory of downloaded clips.

    Clips are named `<youtube_id>_<start:06d>_<end:06d>.<ext>` and may sit in class sub-folders (any depth); the
    directory is listed once, so 650k clips cost one listing, not 650k lookups. `video_id` is the clip name without
    extension. Annotated clips that are not in the directory are quarantined as `missing` (YouTube takedowns).
    """

    REQUIRED = ("label", "youtube_id", "time_start", "time_end")

    def __init__(self, annotations_csv: str | os.PathLike, video_dir: str | os.PathLike, *,
                 labels: Sequence[str] | str | None = None):
        self.annotations_csv = str(annotations_csv)
        self.video_dir = str(video_dir)
        self.labels = labels

    def list(self) -> Listing:
        rows = list(csv.DictReader(io.StringIO(_read_text(self.annotations_csv))))
        if not rows:
            raise ManifestError(f"{self.annotations_csv}: no annotation rows")
        missing_cols = [c for c in self.REQUIRED if c not in rows[0]]
        if missing_cols:
            raise ManifestError(f"{self.annotations_csv}: missing column(s) {', '.join(missing_cols)}; expected "
                                f"{','.join(self.REQUIRED)}[,split], found {','.join(rows[0])}")
        clips: dict[str, tuple[str, int]] = {}
        for rel, size in _list_files(self.video_dir):
            if not _is_video_name(rel):
                continue
            stem = posixpath.splitext(posixpath.basename(rel))[0]
            if stem in clips:
                log.warning("%s: clip %s found twice (%s, %s); using the first", self.video_dir, stem,
                            clips[stem][0], rel)
                continue
            clips[stem] = (rel, size)
        candidates, rejected = [], []
        for line, row in enumerate(rows, start=2):
            where = f"{self.annotations_csv} line {line}"
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError) as e:
                raise ManifestError(f"{where}: time_start/time_end must be numbers, got "
                                    f"{row['time_start']!r}, {row['time_end']!r}") from e
            youtube_id = (row["youtube_id"] or "").strip()
            label = (row["label"] or "").strip()
            if not youtube_id or not label:
                raise ManifestError(f"{where}: empty youtube_id or label")
            video_id = f"{youtube_id}_{start:06d}_{end:06d}"
            split = _split_value(row.get("split"), where)
            if video_id not in clips:
                rejected.append({"path": join(self.video_dir, video_id + ".mp4"), "reason": "missing",
                                 "detail": f"{where}: no clip named {video_id}.* under {self.video_dir}"})
                continue
            rel, size = clips[video_id]
            candidates.append(Candidate(video_id, join(self.video_dir, rel), label, split, size))
        return Listing(candidates, rejected, _labels_arg(self.labels))


class UCF101Source:
    """The UCF101 split files: `classInd.txt` ("1 ApplyEyeMakeup"), `trainlistNN.txt` ("Class/v_x.avi 1") and
    `testlistNN.txt` ("Class/v_x.avi", no label: the class is the folder).

    The label map is classInd's order (UCF101's official numbering, shifted to 0-based). trainlist -> split
    "train", testlist -> split "test" (UCF101 has no separate validation set; train with data.val_split=test).
    `video_id` is the list entry ("Class/v_x.avi").
    """

    def __init__(self, splits_dir: str | os.PathLike, video_root: str | os.PathLike, split_number: int = 1):
        if split_number not in (1, 2, 3):
            raise ManifestError(f"UCF101 split_number must be 1, 2 or 3, got {split_number}")
        self.splits_dir = str(splits_dir)
        self.video_root = str(video_root)
        self.split_number = split_number

    def list(self) -> Listing:
        class_file = join(self.splits_dir, "classInd.txt")
        names: dict[int, str] = {}
        for n, line in enumerate(_read_text(class_file).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise ManifestError(f"{class_file} line {n}: expected '<index> <ClassName>', got {line!r}")
            names[int(parts[0])] = parts[1]
        if sorted(names) != list(range(1, len(names) + 1)):
            raise ManifestError(f"{class_file}: class indices must be 1..{len(names)} (1-based, no gaps)")
        label_names = [names[i] for i in range(1, len(names) + 1)]
        candidates = []
        for kind, split in (("train", "train"), ("test", "test")):
            list_file = join(self.splits_dir, f"{kind}list{self.split_number:02d}.txt")
            for n, line in enumerate(_read_text(list_file).splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split()
                rel = parts[0].replace("\\", "/")
                where = f"{list_file} line {n}"
                if "/" not in rel:
                    raise ManifestError(f"{where}: expected '<Class>/<video>', got {rel!r}")
                label = rel.split("/", 1)[0]
                if len(parts) > 1:
                    try:
                        index = int(parts[1])
                    except ValueError as e:
                        raise ManifestError(f"{where}: label index must be an integer, got {parts[1]!r}") from e
                    if index not in names:
                        raise ManifestError(f"{where}: label index {index} is not in {class_file} "
                                            f"(1..{len(names)}; classInd is 1-based)")
                    label = names[index]
                candidates.append(Candidate(rel, join(self.video_root, rel), label, split))
        if not candidates:
            raise ManifestError(f"{self.splits_dir}: split {self.split_number} lists no videos")
        return Listing(candidates, label_names=label_names)


class TableSource:
    """A CSV or Parquet table with columns `path,label[,split][,video_id]`.

    `label` is a class name or an integer index. With names the label map is the sorted names (or `labels=`);
    with integers it is `labels=` when given, else "0".."max". Relative paths are relative to the table's folder.
    `video_id` defaults to the path as written in the table.
    """

    def __init__(self, path: str | os.PathLike, *, labels: Sequence[str] | str | None = None):
        self.path = str(path)
        self.labels = labels

    def _read(self) -> pa.Table:
        fs, p = resolve(self.path)
        if fs.get_file_info(p).type != pafs.FileType.File:
            raise ManifestError(f"{self.path}: table file not found")
        ext = posixpath.splitext(p)[1].lower()
        try:
            if ext in (".parquet", ".pq"):
                return pq.read_table(p, filesystem=fs)
            if ext in (".csv", ".tsv"):
                import pyarrow.csv as pacsv

                with fs.open_input_stream(p) as f:
                    return pacsv.read_csv(f, parse_options=pacsv.ParseOptions(delimiter="\t" if ext == ".tsv"
                                                                              else ","))
        except (pa.ArrowInvalid, OSError) as e:
            raise ManifestError(f"{self.path}: cannot read the table: {e}") from e
        raise ManifestError(f"{self.path}: expected a .csv, .tsv or .parquet table, got {ext or 'no extension'}")

    def list(self) -> Listing:
        table = self._read()
        missing = [c for c in ("path", "label") if c not in table.column_names]
        if missing:
            raise ManifestError(f"{self.path}: missing column(s) {', '.join(missing)}; expected path,label[,split]"
                                f"[,video_id], found {','.join(table.column_names)}")
        if table.num_rows == 0:
            raise ManifestError(f"{self.path}: the table has no rows")
        base = posixpath.dirname(self.path) if is_uri(self.path) else os.path.dirname(os.path.abspath(self.path))
        label_type = table.schema.field("label").type
        int_labels = pa.types.is_integer(label_type)
        if not int_labels and not pa.types.is_string(label_type) and not pa.types.is_large_string(label_type):
            raise ManifestError(f"{self.path}: column label must hold class names or integers, got {label_type}")
        label_names = _labels_arg(self.labels)
        data = table.to_pydict()
        if int_labels:
            values = data["label"]
            if any(v is None or v < 0 for v in values):
                raise ManifestError(f"{self.path}: column label has empty or negative integers")
            if label_names is None:
                label_names = [str(i) for i in range(max(values) + 1)]
            elif max(values) >= len(label_names):
                raise ManifestError(f"{self.path}: label {max(values)} is outside the {len(label_names)} "
                                    f"classes of labels=")
            names = [label_names[v] for v in values]
        else:
            names = [(v or "").strip() for v in data["label"]]
        candidates = []
        for i, (raw_path, name) in enumerate(zip(data["path"], names)):
            where = f"{self.path} row {i + 1}"
            if not raw_path or not name:
                raise ManifestError(f"{where}: empty path or label")
            path = raw_path if is_uri(raw_path) or os.path.isabs(raw_path) else join(base, raw_path)
            split = _split_value(data["split"][i], where) if "split" in data else None
            video_id = str(data["video_id"][i]) if "video_id" in data and data["video_id"][i] else raw_path
            candidates.append(Candidate(video_id, path, name, split))
        return Listing(candidates, label_names=label_names)


# --------------------------------------------------------------------------------------------------------------
# Probing on Ray


class _Prober:
    """Ray Data actor: probes paths in a killable child process (pipeline.data.decode.IsolatedDecoder), and with
    `normalize` re-encodes each accepted video into its "out_path" (in a second killable child) and probes that."""

    def __init__(self, timeout_s: float, probe_fn=None, normalize: dict[str, Any] | None = None,
                 decoder: str = "auto"):
        from pipeline.data.decode import IsolatedDecoder

        self._backend = decoder

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
        info = self._decoder.probe(path, decoder=self._backend)
        row.update(num_frames=int(info.num_frames), fps=float(info.fps), width=int(info.width),
                   height=int(info.height), duration=float(info.duration), codec=str(info.codec or ""),
                   backend=str(getattr(info, "backend", "") or "decord"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline.data.decode import DecodeError

        out: dict[str, list] = defaultdict(list)
        for path, size, out_path in zip(batch["path"], batch["size_bytes"], batch["out_path"]):
            path = str(path)
            row = {"num_frames": 0, "fps": 0.0, "width": 0, "height": 0, "duration": 0.0, "codec": "", "backend": "",
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
    if not is_uri(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        return np.asarray([normalize_video(src, dst, side, gop)])
    with tempfile.TemporaryDirectory(prefix="eco-normalize-") as tmp:
        local = os.path.join(tmp, "video.mp4")
        ratio = normalize_video(src, local, side, gop)
        fs, p = resolve(dst)
        with open(local, "rb") as f, fs.open_output_stream(p) as g:
            g.write(f.read())
    return np.asarray([ratio])


def _normalized_path(out_dir: str, video_id: str) -> str:
    """out_dir/videos_normalized/<video_id without scheme, leading "/" or "..", extension .mp4>."""
    rel = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", video_id).replace("\\", "/").lstrip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".", "..")] or ["video"]
    parts[-1] = posixpath.splitext(parts[-1])[0] + ".mp4"
    return join(out_dir, NORMALIZED_DIR, *parts)


def _file_size(path: str) -> int:
    fs, p = resolve(path)
    return int(fs.get_file_info(p).size or 0)


# The storage variables forwarded to Ray workers, and the Ray start-up policy, live in one place each.
STORAGE_ENV_VARS = storage.STORAGE_ENV_VARS
storage_runtime_env = storage.storage_runtime_env


def ensure_ray() -> None:
    """Join the running Ray cluster or start a local instance (pipeline.raystart)."""
    from pipeline import raystart

    raystart.ensure_ray()


def _probe_all(candidates: list[Candidate], timeout_s: float, workers: int | None, probe_fn=None,
               normalize: dict[str, Any] | None = None, out_dir: str = "", decoder: str = "auto"
               ) -> list[dict[str, Any]]:
    import ray

    ensure_ray()
    n = len(candidates)
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = max(1, min(workers, n))
    # Small blocks so that every actor gets work (one block is processed by one actor); a few per actor.
    rows_per_block = max(1, min(64, math.ceil(n / (workers * 4))))
    items = [{"path": c.path, "size_bytes": -1 if c.size_bytes is None else c.size_bytes,
              "out_path": _normalized_path(out_dir, c.video_id) if normalize else ""} for c in candidates]
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(n / rows_per_block)).map_batches(
        _Prober,
        fn_constructor_kwargs={"timeout_s": timeout_s, "probe_fn": probe_fn, "normalize": normalize,
                               "decoder": decoder},
        batch_size=rows_per_block,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        runtime_env=storage_runtime_env(),
    )
    results: list[dict[str, Any]] = []
    started, last_log = time.monotonic(), 0.0
    # Ray Data's own progress bar shows the probe in a terminal; this log line is the progress in job logs
    # (and where bars are disabled).
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        results.extend(batch.to_pylist())
        now = time.monotonic()
        if now - last_log > 10 or len(results) == n:
            last_log = now
            log.info("probed %d/%d videos (%.0f s)", len(results), n, now - started)
    return results


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
            probe_fn: Callable | None = None, decoder: str = "auto") -> PrepareSummary:
    """List, probe (on Ray) and write the manifest, label map, quarantine and summary of `source` to `out_dir`.

    `source` is a FolderSource, KineticsSource, UCF101Source or TableSource (anything with `.list() -> Listing`).
    Starts a local Ray instance if none is running. See the module docstring for the files and the split.
    `probe_workers`: probe actors (default: the cluster's CPUs). `probe_fn` replaces pipeline.data.decode.probe in
    the killable probe process (a module-level function; tests inject hanging or crashing probes).
    `normalize_short_side` / `normalize_gop`: re-encode every accepted video as H.264 with this short side (never
    upscaled) and keyframe interval (pipeline.data.normalize) into out_dir/videos_normalized/<video_id>.mp4; the
    manifest then points at (and describes) those files, and the summary records the size ratio.
    `decoder`: the probe's decode backend, "auto" (decord, PyAV for files decord cannot decode), "decord" or
    "pyav" (pipeline.data.decode); the manifest's `backend` column records the one each video was probed with.
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
    probes = {r["path"]: r for r in _probe_all(candidates, probe_timeout_s, probe_workers, probe_fn, normalize,
                                               out_dir, decoder)}
    accepted: list[tuple[Candidate, dict[str, Any]]] = []
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

    rows = [{"video_id": c.video_id, "path": _normalized_path(out_dir, c.video_id) if normalize else c.path,
             "label": index[c.label_name], "label_name": c.label_name,
             "split": c.split or assigned[c.video_id], "num_frames": r["num_frames"], "fps": r["fps"],
             "width": r["width"], "height": r["height"], "duration": r["duration"], "codec": r["codec"],
             "size_bytes": r["size_bytes"], "backend": r["backend"]} for c, r in accepted]
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
        backends=dict(sorted(Counter(r["backend"] for r in rows).items())))
    _write_bytes(files["summary"], json.dumps(summary.to_dict(), indent=2).encode())
    log.info("%s", summary.describe())
    return summary


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
        names = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    return _check_label_names(names, path)
