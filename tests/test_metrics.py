"""Exact metric sums (pure torch) and their all-reduce across real gloo ranks."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pipeline.training.metrics import ClassificationSums, mean_class_accuracy, per_class_accuracy


def _reference(logits, labels):
    """Independent, loop-based computation of the same metrics."""
    n, c = logits.shape
    top1 = top5 = 0
    conf = [[0] * c for _ in range(c)]
    for i in range(n):
        order = sorted(range(c), key=lambda j: -float(logits[i, j]))
        top1 += order[0] == labels[i]
        top5 += labels[i] in order[:5]
        conf[labels[i]][order[0]] += 1
    per_class = [conf[k][k] / sum(conf[k]) for k in range(c) if sum(conf[k])]
    return top1 / n, top5 / n, conf, sum(per_class) / len(per_class)


def test_batched_sums_match_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 7, generator=g)
    labels = torch.randint(0, 7, (37,), generator=g).tolist()
    sums = ClassificationSums(7)
    for lo in range(0, 37, 10):  # uneven batches
        x, y = logits[lo:lo + 10], torch.tensor(labels[lo:lo + 10])
        sums.update(x, y, F.cross_entropy(x, y, reduction="sum"))
    m = sums.compute(prefix="val_")
    top1, top5, conf, mca = _reference(logits, labels)
    assert m["val_count"] == 37
    assert m["val_top1"] == pytest.approx(top1)
    assert m["val_top5"] == pytest.approx(top5)
    assert m["val_mean_class_acc"] == pytest.approx(mca)
    assert m["val_loss"] == pytest.approx(F.cross_entropy(logits, torch.tensor(labels)).item(), rel=1e-6)
    assert sums.confusion.long().tolist() == conf
    assert sums.per_class_total.long().tolist() == [sum(r) for r in conf]


def test_mean_class_accuracy_is_not_overall_accuracy():
    # Class 0: 9/10 right, class 1: 0/1 right -> overall 9/11, mean class 0.45; absent class 2 is ignored.
    conf = torch.tensor([[9, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert mean_class_accuracy(conf) == pytest.approx(0.45)
    assert per_class_accuracy(conf)[:2].tolist() == pytest.approx([0.9, 0.0])
    assert torch.isnan(per_class_accuracy(conf)[2])


def test_topk_with_fewer_than_five_classes():
    sums = ClassificationSums(3)
    sums.update(torch.tensor([[0.1, 0.5, 0.4], [3.0, 2.0, 1.0]]), torch.tensor([2, 2]))
    m = sums.compute()
    assert (m["top1"], m["top5"], m["count"]) == (0.0, 1.0, 2.0)


def _worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, labels = shards[rank]
        sums = ClassificationSums(5)
        if len(labels):
            sums.update(logits, labels, F.cross_entropy(logits, labels, reduction="sum"))
        m = sums.all_reduce().compute()
        out[rank] = (m, sums.confusion.tolist())
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_uneven_shards_equals_single_process():
    """Three real gloo ranks with 5, 2 and 0 samples: the reduced metrics equal one process over all 7."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 5, generator=g)
    labels = torch.randint(0, 5, (7,), generator=g)
    shards = [(logits[:5], labels[:5]), (logits[5:], labels[5:]), (logits[:0], labels[:0])]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.start_processes(_worker, args=(3, port, shards, out), nprocs=3, start_method="spawn", join=True)
    single = ClassificationSums(5)
    single.update(logits, labels, F.cross_entropy(logits, labels, reduction="sum"))
    expected = single.compute()
    for rank in range(3):
        m, conf = out[rank]
        assert conf == single.confusion.tolist()
        for k, v in expected.items():
            assert m[k] == pytest.approx(v), (rank, k)
