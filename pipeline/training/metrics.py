"""Exact classification metrics, summed across ranks (pure torch; no Ray, no wandb).

Each rank accumulates counts over the clips it actually saw, then one SUM all-reduce combines them. Nothing is
averaged per rank and no sample is padded or duplicated (unlike DistributedSampler's padding), so the result is
identical to a single-process evaluation of the same clips.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ClassificationSums:
    """Running sums: loss, top-1 / top-5 correct counts and the confusion matrix (rows: true, cols: predicted).

    Per-class correct / total are the confusion matrix's diagonal / row sums.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.topk = min(5, num_classes)
        # float64 holds integer counts exactly up to 2**53 and lets one all-reduce carry everything.
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top1 = torch.zeros((), dtype=torch.float64, device=device)
        self.top5 = torch.zeros((), dtype=torch.float64, device=device)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor | float | None = None) -> None:
        """Add a batch: `logits` (N, C) (or probabilities), `labels` (N,), `loss_sum` = summed (not mean) loss."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits: expected (N, {self.num_classes}), got {tuple(logits.shape)}")
        labels = labels.to(self.confusion.device, torch.long)
        logits = logits.detach().to(self.confusion.device, torch.float32)
        top = logits.topk(self.topk, dim=1).indices  # (N, k)
        hits = top == labels[:, None]  # (N, k)
        self.top1 += hits[:, 0].sum()
        self.top5 += hits.any(dim=1).sum()
        flat = labels * self.num_classes + top[:, 0]
        # index_add_ rather than bincount: bincount on CUDA reads the maximum back to the host (a sync per batch).
        self.confusion.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.confusion.dtype))
        if loss_sum is not None:
            self.loss_sum += torch.as_tensor(loss_sum, dtype=torch.float64, device=self.loss_sum.device).detach()

    @property
    def count(self) -> int:
        return int(self.confusion.sum().item())

    @property
    def per_class_correct(self) -> torch.Tensor:
        return self.confusion.diagonal()

    @property
    def per_class_total(self) -> torch.Tensor:
        return self.confusion.sum(dim=1)

    def all_reduce(self) -> "ClassificationSums":
        """SUM the counts over all ranks in place (a no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            packed = torch.cat([self.loss_sum[None], self.top1[None], self.top5[None], self.confusion.flatten()])
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            self.loss_sum = packed[0].clone()
            self.top1 = packed[1].clone()
            self.top5 = packed[2].clone()
            self.confusion = packed[3:].view(self.num_classes, self.num_classes).clone()
        return self

    def compute(self, prefix: str = "") -> dict[str, float]:
        """`loss`, `top1`, `top5`, `mean_class_acc` (fractions in [0, 1]) and `count`, keys prefixed."""
        n = self.count
        return {
            f"{prefix}loss": float(self.loss_sum.item()) / n if n else float("nan"),
            f"{prefix}top1": float(self.top1.item()) / n if n else 0.0,
            f"{prefix}top5": float(self.top5.item()) / n if n else 0.0,
            f"{prefix}mean_class_acc": mean_class_accuracy(self.confusion),
            f"{prefix}count": float(n),
        }


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Accuracy of each class (NaN for classes with no samples)."""
    total = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / total


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Mean over the classes that have samples of diag / row sum (the UCF101/Kinetics 'mean class accuracy')."""
    acc = per_class_accuracy(confusion)
    present = ~torch.isnan(acc)
    return float(acc[present].mean().item()) if present.any() else 0.0
