"""`eco export`: TorchScript and ONNX files whose logits equal PyTorch's on real clips, loaded back as Predictors.

The colour-task checkpoint of test_inference (ECO-Lite, 4 segments at 112 px) keeps tracing and onnxruntime cheap.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_inference import CLASSES, tiny_task  # noqa: F401 - the session fixture


def _real_clips(tiny_task, predictor):
    return np.stack([predictor.load_clip(str(path)) for path, _ in tiny_task["videos"].values()])  # (6, T, H, W, 3)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_logits_equal_pytorch_on_real_clips(tiny_task, tmp_path, capsys, fmt):
    from pipeline.cli import main
    from pipeline.data.transforms import normalize
    from pipeline.inference import Predictor
    from pipeline.inference.export import load_exported, read_metadata

    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra (make setup installs it)")
    out = tmp_path / f"eco.{'onnx' if fmt == 'onnx' else 'pt'}"
    code = main(["export", "--checkpoint", str(tiny_task["checkpoint"]), "--format", fmt, "--out", str(out)])
    assert code == 0 and str(out) in capsys.readouterr().out
    meta = read_metadata(out)
    assert meta["label_names"] == list(CLASSES) and meta["preprocessing"]["normalization"] == "imagenet"

    with Predictor.from_checkpoint(tiny_task["checkpoint"], device="cpu") as reference:
        clips = _real_clips(tiny_task, reference)
        x = normalize(torch.from_numpy(clips), "imagenet")  # (6, T, 3, 112, 112)
        with torch.no_grad():
            want = reference.model(x)
        paths = [str(p) for p, _ in tiny_task["videos"].values()]
        want_results = reference.predict(paths, top_k=3, batch_size=4)
    with load_exported(out, device="cpu") as exported:
        assert exported.preprocessing == reference.preprocessing and exported.label_names == CLASSES
        with torch.no_grad():
            got = exported.model(x)  # the whole batch of 6: the batch axis is dynamic
            one = exported.model(x[:1])
        got_results = exported.predict(paths, top_k=3, batch_size=4)
    assert got.shape == want.shape == (6, len(CLASSES))
    assert float((got - want).abs().max()) <= 1e-4
    assert float((one - want[:1]).abs().max()) <= 1e-4
    for a, b in zip(got_results, want_results):
        assert a.labels == b.labels and a.label_ids == b.label_ids
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


@pytest.mark.timeout(60)
def test_a_file_without_export_metadata_is_refused(tmp_path):
    from pipeline.inference.export import read_metadata

    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ValueError, match="not an eco export"):
        read_metadata(plain)
