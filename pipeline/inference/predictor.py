"""Load a checkpoint together with its evaluation preprocessing, and predict top-k labels for videos.

Checkpoints are read by the one reader, `pipeline.model.checkpoint_io.read`:
- the project's own (a directory with `checkpoint.pt`, format "eco-pipeline/1"): the model is rebuilt from the stored
  config, and the config's data section gives the preprocessing, so predictions use exactly what evaluation used;
- the authors' Kinetics-400 release (`ECO_Lite_rgb_model_Kinetics.pth.tar` layout, with or without the `module.`
  prefix): 400 Kinetics names in the authors' (alphabetical) order and the authors' test-time preprocessing, see
  `OFFICIAL_PREPROCESSING`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from pipeline.model import checkpoint_io
from pipeline.model.checkpoint_io import OFFICIAL_PREPROCESSING, Checkpoint, Preprocessing

__all__ = ["OFFICIAL_PREPROCESSING", "CheckpointInfo", "Predictor", "Preprocessing", "Result", "describe_checkpoint",
           "predict_main", "read_checkpoint_info"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself, without building the model."""

    kind: str  # "project" or "official"
    variant: str  # "lite" or "full"
    label_names: tuple[str, ...]
    preprocessing: Preprocessing
    dropout: float = 0.0


@dataclass(frozen=True)
class Result:
    """The top-k prediction for one video, or the reason it could not be decoded (`error` is then set)."""

    path: str
    labels: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    label_ids: tuple[int, ...] = ()
    feature: np.ndarray | None = field(default=None, repr=False, compare=False)
    error: str | None = None  # a stable reason code from pipeline.data.decode (missing, not_a_video, timeout, ...)
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self, *, include_feature: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if not self.ok:
            out["error"] = self.error
            out["detail"] = self.detail
            return out
        out["top_k"] = [{"label": n, "label_id": i, "prob": round(p, 6)}
                        for n, i, p in zip(self.labels, self.label_ids, self.probs)]
        if include_feature and self.feature is not None:
            out["feature"] = [round(float(v), 6) for v in self.feature]
        return out


def describe_checkpoint(ckpt: dict[str, Any], source: str = "checkpoint") -> CheckpointInfo:
    """Classify a loaded checkpoint dict (project or official layout) and read its labels and preprocessing."""
    return _info(checkpoint_io.interpret(ckpt, file=source))


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Labels and preprocessing of a checkpoint file or directory (reads the file, builds no model)."""
    return _info(checkpoint_io.read(path))


def _info(ckpt: Checkpoint) -> CheckpointInfo:
    return CheckpointInfo(kind=ckpt.layout, variant=ckpt.variant, label_names=ckpt.label_names,
                          preprocessing=ckpt.preprocessing, dropout=ckpt.dropout)


def top_k(probs: np.ndarray, k: int) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """Per row of probabilities (N, C): the k most likely class ids and their probabilities, best first."""
    k = max(1, min(int(k), probs.shape[1]))
    values, ids = torch.topk(torch.from_numpy(np.ascontiguousarray(probs)), k, dim=1)
    return [(tuple(int(i) for i in row_i), tuple(float(v) for v in row_v))
            for row_i, row_v in zip(ids.tolist(), values.tolist())]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """An ECO model in eval mode with the labels and preprocessing of the checkpoint it came from."""

    def __init__(self, model: torch.nn.Module, label_names: Iterable[str], preprocessing: Preprocessing, *,
                 device: str | torch.device | None = None, decode_timeout_s: float = 60.0, amp: bool = False):
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        # bf16 autocast (fast on GPUs with bf16 tensor cores); off by default so predictions are fp32-exact.
        self.amp = amp
        self.label_names = tuple(label_names)
        self.preprocessing = preprocessing
        self.decode_timeout_s = decode_timeout_s
        self._decoder = None
        num_classes = getattr(model, "num_classes", len(self.label_names))
        if num_classes != len(self.label_names):
            raise ValueError(f"model has {num_classes} classes but {len(self.label_names)} label names were given")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device | None = None, *,
                        preprocessing: Preprocessing | None = None, label_names: Iterable[str] | None = None,
                        decode_timeout_s: float = 60.0, amp: bool = False) -> "Predictor":
        """Rebuild the model from a project checkpoint or the authors' release and load it strictly.

        `preprocessing` and `label_names` override what the checkpoint implies (e.g. the book's 224 short side).
        """
        from pipeline.model import BUILDERS
        from pipeline.model.weights import load_weights

        ckpt = checkpoint_io.read(path)  # a directory's model.pt: model weights only, not the optimiser state
        info = _info(ckpt)
        prep = preprocessing or info.preprocessing
        labels = tuple(label_names) if label_names is not None else info.label_names
        if len(labels) != len(info.label_names):
            raise ValueError(f"{path}: checkpoint has {len(info.label_names)} classes, {len(labels)} names given")
        model = BUILDERS[info.variant](num_classes=len(labels), num_segments=prep.num_segments, dropout=info.dropout)
        # Strict: every tensor of the model comes from the file and vice versa (mismatches are named by key).
        load_weights(model, ckpt)
        log.info("loaded %s checkpoint %s: ECO-%s, %d classes, %s", info.kind, path, info.variant.capitalize(),
                 len(labels), prep)
        return cls(model, labels, prep, device=device, decode_timeout_s=decode_timeout_s, amp=amp)

    # -- decoding -------------------------------------------------------------------------------------------------

    def _decoder_or_start(self):
        if self._decoder is None:
            from pipeline.data.isolation import IsolatedDecoder

            # A persistent killable child: a decord hang or native crash on one file fails that file only.
            self._decoder = IsolatedDecoder(timeout_s=self.decode_timeout_s, max_clips_per_process=2000)
        return self._decoder

    def load_clip(self, path: str, *, decoder=None, check=None) -> np.ndarray:
        """Decode and preprocess one video as at evaluation: uint8 (T, crop, crop, 3). Raises DecodeError.

        `decoder`: an `IsolatedDecoder` to use instead of this predictor's own (a server keeps several);
        `check(info)`: called with the probe's facts before any frame is decoded, may raise to refuse the file.
        """
        from pipeline.data.clips import eval_clip

        decoder = decoder or self._decoder_or_start()
        p = self.preprocessing
        info = decoder.probe(path)
        if check is not None:
            check(info)
        # The evaluation pipeline's own clip computation (pipeline.data.clips), so predictions match `eco evaluate`.
        return eval_clip(lambda indices: decoder.decode(path, indices, short_side=p.short_side,
                                                        num_frames=info.num_frames, size=(info.width, info.height),
                                                        backend=info.backend),
                         info.num_frames, num_segments=p.num_segments, short_side=p.short_side,
                         crop_size=p.crop_size)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the model ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_clips(self, clips: np.ndarray | torch.Tensor, *, features: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Class probabilities (N, C) float32 for uint8 clips (N, T, crop, crop, 3), and the clip features (N, D)."""
        from pipeline.data.transforms import normalize

        x = torch.as_tensor(clips).to(self.device, non_blocking=True)
        x = normalize(x, self.preprocessing.normalization)  # (N, T, 3, H, W) float32
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if features:
                feats = self.model.forward_features(x)  # (N, D)
                # In eval mode dropout is the identity, so fc(features) is exactly forward(x).
                logits = self.model.fc(feats)
            else:
                feats = None
                logits = self.model(x)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy(), (feats.float().cpu().numpy() if feats is not None else None)

    def top_k(self, probs: np.ndarray, k: int) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        """Per row of probabilities (N, C): the k most likely class ids and their probabilities, best first."""
        return top_k(probs, k)

    def predict(self, paths: Iterable[str | Path], top_k: int = 5, *, features: bool = False,
                batch_size: int = 8) -> list[Result]:
        """Top-k labels for each video, in the order given. Undecodable files get a Result with `error` set."""
        from pipeline.data.decode import DecodeError

        paths = [str(p) for p in paths]
        results: dict[int, Result] = {}
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            probs, feats = self.predict_clips(np.stack([c for _, c in pending]), features=features)
            for row, ((index, _), (ids, values)) in enumerate(zip(pending, self.top_k(probs, top_k))):
                results[index] = Result(path=paths[index], labels=tuple(self.label_names[i] for i in ids),
                                        probs=values, label_ids=ids,
                                        feature=feats[row] if feats is not None else None)
            pending.clear()

        for index, path in enumerate(paths):
            try:
                pending.append((index, self.load_clip(path)))
            except DecodeError as e:
                log.warning("%s: cannot decode (%s): %s", path, e.reason, getattr(e, "detail", ""))
                results[index] = Result(path=path, error=e.reason, detail=str(getattr(e, "detail", "") or e))
            if len(pending) >= batch_size:
                flush()
        flush()
        return [results[i] for i in range(len(paths))]


def predict_main(args) -> int:
    """`eco predict VIDEO ... --checkpoint C [--top-k K] [--json] [--features]`: prints the top-k per video.

    Returns 1 when any video could not be decoded (its error is printed; the others are still predicted).
    """
    import json
    import sys

    with Predictor.from_checkpoint(args.checkpoint) as predictor:
        results = predictor.predict(args.videos, top_k=args.top_k, features=args.features)
    failed = [r for r in results if not r.ok]
    if args.json:
        p = predictor.preprocessing
        print(json.dumps({"checkpoint": str(args.checkpoint),
                          "preprocessing": {"num_segments": p.num_segments, "short_side": p.short_side,
                                            "crop_size": p.crop_size, "normalization": p.normalization},
                          "results": [r.to_dict(include_feature=args.features) for r in results]}, indent=2))
    else:
        for r in results:
            print(r.path)
            if not r.ok:
                print(f"  error ({r.error}): {r.detail}")
                continue
            for name, prob in zip(r.labels, r.probs):
                print(f"  {prob:7.2%}  {name}")
            if r.feature is not None:
                print(f"  feature: {r.feature.shape[0]}-d, L2 norm {float(np.linalg.norm(r.feature)):.3f}")
    if failed:
        print(f"eco predict: {len(failed)} of {len(results)} videos could not be decoded", file=sys.stderr)
    return 1 if failed else 0
