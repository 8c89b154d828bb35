"""GPU training throughput of ECO-Lite 16F at 224: clips/s and MFU for three settings, and the data rate it needs.

Settings, each measured in the same run on the same synthetic batch (the model's speed does not depend on pixel
values; data loading is excluded on purpose, it is the other half of the comparison):
    fp32 eager                                 the baseline
    bf16 autocast + channels_last(_3d)          what `eco train` does on GPU (train.amp, train.channels_last)
    bf16 + channels_last + torch.compile        train.compile
One training step = forward, cross-entropy, backward, SGD (Nesterov) step, like the training loop.

MFU = achieved model FLOP/s / the GPU's peak dense FLOP/s for the dtype (bf16 tensor-core peak for the bf16
settings; for fp32 the TF32 tensor-core peak when TF32 matmuls are allowed, else the plain fp32 peak). Model FLOPs
per training clip = 3 x the forward FLOPs from PyTorch's flop counter (`pipeline.model.info`: 46.5 GMACs = 93.0
GFLOPs forward for ECO-Lite 16F at 224), the usual forward + 2x backward estimate.

Then: the data rate the GPU needs (its best clips/s) against what one CPU core supplies (clips/s/core from the
shard benchmark's JSON when given with --decode-results, else the Ray Data stage figures measured for
docs/benchmarks.md), i.e. the CPU cores per GPU for the MP4 path and for frame shards.

Runs unchanged on any CUDA machine (`eco bench gpu [--out DIR]`). Without CUDA it says so and exits 0; with
--quick it then runs a tiny CPU variant (4 segments, 112 px, fp32 and bf16 autocast on CPU, no compile) to exercise
the code path.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline.bench._common import bar_plot, write_results

log = logging.getLogger(__name__)

# Dense peak TFLOP/s (no sparsity) by device-name fragment: (bf16, tf32, fp32). Vendor datasheets (SXM parts).
PEAK_TFLOPS: dict[str, tuple[float, float, float]] = {
    "H200": (989.0, 494.0, 67.0),
    "H100": (989.0, 494.0, 67.0),  # SXM; the PCIe H100 is lower (756/378/51): pass --peak-tflops for it
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "A10G": (70.0, 35.0, 31.2),
    "A10": (125.0, 62.5, 31.2),
    "V100": (125.0, 15.7, 15.7),  # no bf16 tensor cores: bf16 runs at roughly fp16-emulated speed or worse
    "T4": (65.0, 8.1, 8.1),
}

# Clips per decode CPU-second through the whole Ray Data stage, measured by `eco bench pipeline` (docs/benchmarks.md,
# section 3, run B: 340x256 Kinetics-like videos), used when no --decode-results is given.
DEFAULT_CPU_CLIPS_PER_CORE = {"mp4": 13.0, "shards": 87.0}

SETTINGS = ("fp32 eager", "bf16 + channels_last", "bf16 + channels_last + compile")


def _peak(device_name: str, dtype: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key, (bf16, tf32, fp32) in PEAK_TFLOPS.items():
        if key in device_name:
            import torch

            if dtype == "bf16":
                return bf16 * 1e12
            return (tf32 if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32 else fp32) * 1e12
    return None


def measure_setting(setting: str, *, device: str, segments: int, size: int, batch: int, steps: int,
                    warmup: int, num_classes: int = 400) -> dict[str, Any]:
    """Training clips/s of one setting on `device` (synthetic inputs already on the device)."""
    import torch
    import torch.nn.functional as F

    from pipeline.model import eco_lite
    from pipeline.training.engine import prepare_model

    torch.manual_seed(0)
    model = eco_lite(num_classes=num_classes, num_segments=segments, dropout=0.3)
    bf16 = "bf16" in setting
    # The training loop's own preparation: channels_last(_3d) and in-place torch.compile (pipeline.training.engine).
    model = prepare_model(model, torch.device(device), channels_last="channels_last" in setting,
                          compile="compile" in setting).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, nesterov=True, weight_decay=5e-4)
    step_model = model
    x = torch.randn(batch, segments, 3, size, size, device=device)  # (N, T, 3, H, W), already normalised
    y = torch.randint(0, num_classes, (batch,), device=device)
    autocast_device = "cuda" if device == "cuda" else "cpu"

    def step() -> None:
        with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=bf16):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(warmup):  # includes torch.compile's compilation
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    out = {"setting": setting, "batch": batch, "steps": steps, "seconds": elapsed, "warmup_s": warmup_s,
           "clips_per_s": batch * steps / elapsed}
    if device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, optimizer, step_model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def measure(*, quick: bool, batch: int | None = None, steps: int | None = None, peak_tflops: float | None = None,
            decode_results: str | None = None, settings: tuple[str, ...] = SETTINGS) -> dict[str, Any]:
    import torch

    from pipeline.model.info import model_info

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if cuda:
        segments, size = 16, 224
        batch = batch or 16
        steps = steps or (10 if quick else 30)
        warmup = 3 if quick else 8
        device_name = torch.cuda.get_device_name(0)
    else:
        # The tiny CPU variant: exercises the code path, numbers mean nothing for a GPU.
        segments, size, batch, steps, warmup = 4, 112, batch or 2, steps or 2, 1
        settings = tuple(s for s in settings if "compile" not in s)
        device_name = "cpu"
    info = model_info("lite", num_segments=segments, size=size, num_classes=400)
    train_flops_per_clip = 3 * 2 * info["gmacs"] * 1e9  # forward FLOPs = 2 x MACs; training = 3 x forward
    rows = []
    for setting in settings:
        try:
            r = measure_setting(setting, device=device, segments=segments, size=size, batch=batch, steps=steps,
                                warmup=warmup)
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working Triton: report, go on
            log.exception("setting %r failed", setting)
            r = {"setting": setting, "error": f"{type(e).__name__}: {e}"}
        if "clips_per_s" in r:
            peak = _peak(device_name, "bf16" if "bf16" in setting else "fp32", peak_tflops) if cuda else None
            r["tflops"] = r["clips_per_s"] * train_flops_per_clip / 1e12
            r["mfu"] = r["clips_per_s"] * train_flops_per_clip / peak if peak else None
        rows.append(r)
    base = next((r["clips_per_s"] for r in rows if r["setting"] == "fp32 eager" and "clips_per_s" in r), None)
    for r in rows:
        if base and "clips_per_s" in r:
            r["speedup_vs_fp32"] = r["clips_per_s"] / base

    cpu_rates = dict(DEFAULT_CPU_CLIPS_PER_CORE)
    source = "docs/benchmarks.md figures"
    if decode_results:
        measured = json.loads(Path(decode_results).read_text())
        from pipeline.bench.shards import ARROW, PROJECT

        cpu_rates = {"mp4": measured["paths"][PROJECT]["clips_per_cpu_s"],
                     "shards": measured["paths"][ARROW]["clips_per_cpu_s"]}
        source = decode_results
    best = max((r["clips_per_s"] for r in rows if "clips_per_s" in r), default=0.0)
    needs = {"gpu_clips_per_s": best,
             "cpu_clips_per_core": cpu_rates, "cpu_rates_from": source,
             "cores_per_gpu": {k: best / v for k, v in cpu_rates.items()}}
    return {"device": device_name, "cuda": cuda, "segments": segments, "size": size, "batch": batch,
            "train_gflops_per_clip": train_flops_per_clip / 1e9, "torch": torch.__version__, "settings": rows,
            "data_rate": needs}


def format_results(res: dict[str, Any]) -> str:
    lines = [f"ECO-Lite {res['segments']}F at {res['size']} training on {res['device']} (batch {res['batch']}, "
             f"{res['train_gflops_per_clip']:.0f} GFLOP per training clip)",
             f"  {'setting':34s} {'clips/s':>9s} {'x fp32':>7s} {'TFLOP/s':>8s} {'MFU':>6s}"]
    for r in res["settings"]:
        if "error" in r:
            lines.append(f"  {r['setting']:34s} failed: {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
        lines.append(f"  {r['setting']:34s} {r['clips_per_s']:9.1f} {r.get('speedup_vs_fp32', float('nan')):7.2f} "
                     f"{r['tflops']:8.1f} {mfu:>6s}")
    d = res["data_rate"]
    if not res["cuda"]:
        return "\n".join(lines)  # the CPU variant's rate says nothing about a GPU's data needs
    lines.append(f"  data rate needed: {d['gpu_clips_per_s']:.0f} clips/s per GPU; one CPU core supplies "
                 + ", ".join(f"{k} {v:.1f}" for k, v in d["cpu_clips_per_core"].items())
                 + f" clips/s ({d['cpu_rates_from']})")
    lines.append("  CPU cores per GPU: " + ", ".join(f"{k} {v:.0f}" for k, v in d["cores_per_gpu"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available() and not getattr(args, "quick", False):
        print("eco bench gpu: no CUDA GPU on this machine: nothing measured (run it on a GPU node; "
              "`--quick` runs a tiny CPU variant of the same code).")
        return 0
    res = measure(quick=bool(getattr(args, "quick", False)), peak_tflops=getattr(args, "peak_tflops", None),
                  decode_results=getattr(args, "decode_results", None))
    if not res["cuda"]:
        print("eco bench gpu: no CUDA GPU: tiny CPU variant (4 segments, 112 px), not a GPU measurement")
    print(format_results(res))
    out = getattr(args, "out", None)
    if out:
        write_results(out, "gpu", res)
        ok = [r for r in res["settings"] if "clips_per_s" in r]
        bar_plot(Path(out) / "img" / "gpu_clips_per_s.png", [r["setting"] for r in ok],
                 [r["clips_per_s"] for r in ok], ylabel="training clips/s",
                 title=f"ECO-Lite {res['segments']}F {res['size']}px on {res['device']}")
    return 0


if __name__ == "__main__":
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's peak TFLOP/s for MFU")
    p.add_argument("--decode-results", default=None, help="shards.json from `eco bench shards --out`")
    sys.exit(run(p.parse_args()))
