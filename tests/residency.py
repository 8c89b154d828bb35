"""Accelerator residency, emulated on CPU: batch tensors that refuse host-only operations.

On a GPU, the batches Ray Train's `iter_torch_batches` yields already live on the device, and so does everything
computed from them. `.numpy()` on such a tensor raises, and `.item()`, `.tolist()` or `float()` make the host wait
for the device's queue to drain. A `DeviceResident` tensor behaves like one on any machine:
- `.numpy()` / `np.asarray()` raise `HostOnlyOperation` (the crash a GPU would give);
- `.item()`, `.tolist()`, `float()`, `int()`, `bool()` are counted as host syncs (allowed: a GPU allows them);
- `.cpu()` is the explicit copy to the host and returns a plain tensor;
- every other operation (`.to(device)` included: it stays on "the device") returns `DeviceResident` results.

`resident_batch` is the picklable batch hook for `train_func_per_worker` (config["batch_hook"]), so the real Ray
Train worker can be run with such batches.
"""

from __future__ import annotations

from typing import Any

import torch


class HostOnlyOperation(RuntimeError):
    """A host-only operation on a tensor that lives on the (emulated) accelerator."""


_REFUSED = {torch.Tensor.numpy, torch.Tensor.__array__}
_SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
          torch.Tensor.__bool__, torch.Tensor.__index__}


class DeviceResident(torch.Tensor):
    # Host syncs seen in this process (item/tolist/float/int/bool on a resident tensor), by operation name.
    syncs: dict[str, int] = {}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _REFUSED:
            raise HostOnlyOperation(f"{getattr(func, '__name__', func)}() on a tensor that lives on the accelerator: "
                                    f"copy it to the host first (.cpu())")
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        if func in _SYNCS:
            name = func.__name__
            cls.syncs[name] = cls.syncs.get(name, 0) + 1
        return super().__torch_function__(func, types, args, kwargs)

    @classmethod
    def reset(cls) -> None:
        cls.syncs = {}

    @classmethod
    def total_syncs(cls) -> int:
        return sum(cls.syncs.values())


def resident(t: torch.Tensor) -> DeviceResident:
    return t.as_subclass(DeviceResident)


def resident_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Batch hook: every tensor of the batch becomes DeviceResident."""
    return {k: resident(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
