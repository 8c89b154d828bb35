"""Distributed training of ECO on Ray Train.

`run.train(cfg)` launches a run, `loop.train_func_per_worker` is what each Ray Train worker executes, and
`evaluate.evaluate(...)` scores a checkpoint. The pure pieces (`optim`, `metrics`, `checkpoint`) import no Ray or
wandb; `tracking` is the only wandb importer. Submodules are imported on demand so this package stays light.
"""
