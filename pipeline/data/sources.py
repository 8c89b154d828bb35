"""Sources of videos: a folder tree, Kinetics annotations, the UCF101 split files or a table -> candidate videos.

Each source's `.list()` returns a `Listing`: the candidate videos (id, path, class name, split if the source has
one, size if a directory listing gave it), the ones rejected before probing (a listed clip that is not there) and
the label map when the source defines it (UCF101 `classInd.txt`, integer labels of a table, an explicit `labels=`
list such as `pipeline.labels.kinetics400_labels()`). Nothing here opens a video: `pipeline.data.manifest.prepare`
probes the candidates (pipeline.data.probe) and writes the manifest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import storage
from pipeline.data.manifest import ManifestError, check_label_names, read_text, resolve

log = logging.getLogger(__name__)
join = storage.join
is_uri = storage.is_uri

# Spellings found in public annotation files (Kinetics uses "validate" in some releases).
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "test": "test", "testing": "test"}

# Files with other extensions (README, .json, .DS_Store, ...) in a video tree are not candidates. A text file
# renamed to .mp4 is a candidate and ends up quarantined as not_a_video.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                              ".3gp", ".ogv", ".ts"})


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
        text = read_text(str(labels))
        names = json.loads(text) if str(labels).endswith(".json") else [ln.strip() for ln in text.splitlines()
                                                                        if ln.strip()]
        return check_label_names(names, str(labels))
    return check_label_names(list(labels), "labels=")


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
        rows = list(csv.DictReader(io.StringIO(read_text(self.annotations_csv))))
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
        for n, line in enumerate(read_text(class_file).splitlines(), start=1):
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
            for n, line in enumerate(read_text(list_file).splitlines(), start=1):
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

