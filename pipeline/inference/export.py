"""`eco export`: a checkpoint's ECO as a TorchScript or ONNX file, and such a file loaded back as a `Predictor`.

The exported graph is the model alone: normalised float clips (N, T, 3, crop, crop) in, logits (N, C) out, the batch
dimension dynamic. Decoding, sampling, resizing and normalisation stay in Python (pipeline.data), so an exported
model is fed exactly what `eco predict` feeds the PyTorch one. What the file needs to be used without its
checkpoint travels inside it as one JSON document (`METADATA_KEY`): the label names and the preprocessing.
TorchScript keeps it as an extra file of the archive, ONNX as a `metadata_props` entry.

Loading an exported file runs no pickle: `torch.jit.load` reads TorchScript code and tensors, ONNX is protobuf.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipeline.inference.predictor import Predictor, Preprocessing

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx"}
METADATA_KEY = "eco_pipeline.json"
EXPORT_FORMAT = "eco-pipeline-export/1"
# ONNX opset: 17 has every operator ECO uses (conv, batch norm, pooling, gemm) and runs on onnxruntime >= 1.14.
ONNX_OPSET = 17


def _metadata(predictor: Predictor, fmt: str) -> str:
    return json.dumps({"format": EXPORT_FORMAT, "model_format": fmt, "label_names": list(predictor.label_names),
                       "preprocessing": asdict(predictor.preprocessing),
                       "variant": getattr(predictor.model, "variant", None)})


def example_input(preprocessing: Preprocessing, batch: int = 2) -> torch.Tensor:
    """A normalised-looking float input (batch, T, 3, crop, crop) for tracing and checks."""
    p = preprocessing
    return torch.randn(batch, p.num_segments, 3, p.crop_size, p.crop_size, generator=torch.Generator().manual_seed(0))


def export_model(checkpoint: str | Path, out: str | Path, *, fmt: str) -> Path:
    """Write the checkpoint's model (project or authors' layout) to `out` as `fmt` ("torchscript" or "onnx")."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    model = predictor.model.eval()
    x = example_input(predictor.preprocessing)
    meta = _metadata(predictor, fmt)
    with torch.inference_mode(False), torch.no_grad():
        if fmt == "torchscript":
            # Tracing records this graph for the example's T and crop; the batch size stays symbolic because
            # forward reads it from x.shape.
            traced = torch.jit.trace(model, x, check_trace=False)
            torch.jit.save(traced, str(out), _extra_files={METADATA_KEY: meta})
        else:
            _export_onnx(model, x, out, meta)
    log.info("exported %s to %s (%s)", checkpoint, out, fmt)
    return out


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, out: Path, meta: str) -> None:
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx extra: pip install 'eco-pipeline[onnx]'") from e

    # The TorchScript-based exporter (deprecated since torch 2.9, still shipped): a symbolic batch axis from
    # dynamic_axes and no onnxscript dependency; the torch.export-based one would need both.
    torch.onnx.export(model, (x,), str(out), input_names=["clip"], output_names=["logits"],
                      dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                      dynamo=False)
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta
    onnx.save(proto, str(out))


class OnnxModule(torch.nn.Module):
    """An onnxruntime session behind the nn.Module interface `Predictor` uses (`model(x)` -> logits)."""

    def __init__(self, path: str | Path, *, device: torch.device):
        super().__init__()
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"clip": x.detach().float().cpu().numpy()})
        return torch.from_numpy(np.asarray(logits)).to(x.device)


def read_metadata(path: str | Path) -> dict:
    """The JSON document an exported file carries (labels, preprocessing); ValueError when it has none."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        text = props.get(METADATA_KEY)
    else:
        files = {METADATA_KEY: ""}
        torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        text = files[METADATA_KEY] or None
    if not text:
        raise ValueError(f"{path}: not an eco export (no {METADATA_KEY!r} metadata); write one with `eco export`")
    meta = json.loads(text)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: export format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return meta


def load_exported(path: str | Path, *, device: str | torch.device | None = None, **predictor_kwargs) -> Predictor:
    """A `Predictor` that runs an exported file (.pt TorchScript or .onnx) with its labels and preprocessing.

    `predict_clips(features=True)` needs the PyTorch model (an export has no separate feature output)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model")
    meta = read_metadata(path)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if path.suffix == ".onnx":
        model: torch.nn.Module = OnnxModule(path, device=dev)
    else:
        model = torch.jit.load(str(path), map_location=dev)
    return Predictor(model, meta["label_names"], Preprocessing(**meta["preprocessing"]), device=dev,
                     **predictor_kwargs)


def export_main(args) -> int:
    """`eco export --checkpoint C --format torchscript|onnx [--out FILE]`: writes the file, checks it against
    PyTorch on a random input, and prints where it is."""
    out = Path(args.out) if args.out else Path("outputs/export") / f"eco{SUFFIXES[args.format]}"
    export_model(args.checkpoint, out, fmt=args.format)
    reference = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    exported = load_exported(out, device="cpu")
    x = example_input(reference.preprocessing)
    with torch.no_grad():
        diff = float((reference.model(x) - exported.model(x)).abs().max())
    print(f"{out}: {args.format}, {len(reference.label_names)} classes, input (N, {reference.preprocessing.num_segments}"
          f", 3, {reference.preprocessing.crop_size}, {reference.preprocessing.crop_size}); max |logit difference| "
          f"against PyTorch on a random input: {diff:.2e}")
    return 0 if diff <= 1e-4 else 1
