"""Per-step overhead of bigtrain's loop against a plain hand-written PyTorch loop.

Same model, data, optimizer and batch order; the two alternate in one process, >= 5 repetitions,
and the median steps/s of each is compared. bigtrain runs twice: as `bigtrain train` runs it
(run folder: metrics.jsonl + TensorBoard, health checks, an evaluation and a checkpoint every
epoch) and as the bare loop (no run folder, no evaluation).

    python bench/overhead.py [--reps 7] [--steps 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bigtrain.build import build
from bigtrain.config import load_recipe


def plain_loop(model, x, y, batch_size, steps, lr, wd, seed):
    """What a user would write by hand: shuffled slices, AdamW, cross-entropy.

    Weight decay only on matrices, as nanoGPT's configure_optimizers does (and as bigtrain does),
    so both sides run the same optimizer work.
    """
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    n, step = len(x), 0
    model.train()
    t0 = time.perf_counter()
    while step < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == steps:
                break
    return steps / (time.perf_counter() - t0)


def bigtrain_run(recipe, steps, with_run_dir):
    overrides = [
        "trainer.max_epochs=null",
        f"trainer.max_steps={steps}",
        "trainer.progress=false",
        "schedule.name=constant",
        "schedule.warmup_steps=0",
    ]
    cfg = load_recipe(recipe, overrides)
    tmp = Path(tempfile.mkdtemp()) if with_run_dir else None
    built = build(cfg, run_dir=tmp, quiet=True)
    if not with_run_dir:
        built.trainer.state.val_data = None
    t0 = time.perf_counter()
    built.trainer.fit()
    rate = steps / (time.perf_counter() - t0)
    if tmp:
        shutil.rmtree(tmp)
    return rate


def plain_run(recipe, steps):
    cfg = load_recipe(recipe, ["trainer.progress=false"])
    built = build(cfg, run_dir=None, quiet=True)  # same data split and the same model class
    torch.manual_seed(cfg.seed)
    model = type(built.model).from_config(
        _model_cfg(cfg), built.data.input_shape, built.data.num_outputs
    )
    tr = built.data.train
    return plain_loop(
        model,
        tr.x,
        tr.y,
        cfg.data.batch_size,
        steps,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.seed,
    )


class _Batches:
    """The plain loop's batch order as an iterable Lightning accepts (no DataLoader overhead)."""

    def __init__(self, x, y, batch_size, seed):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        perm = torch.randperm(len(self.x), generator=self.gen)
        for i in range(0, len(self.x), self.batch_size):
            idx = perm[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def lightning_run(recipe, steps, lean):
    """The same model, optimizer and batches in Lightning's Trainer (a peer), if installed."""
    import lightning as L

    cfg = load_recipe(recipe, ["trainer.progress=false"])
    built = build(cfg, run_dir=None, quiet=True)
    torch.manual_seed(cfg.seed)
    net = type(built.model).from_config(
        _model_cfg(cfg), built.data.input_shape, built.data.num_outputs
    )
    lr, wd = cfg.optim.lr, cfg.optim.weight_decay

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, _):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            groups = [
                {"params": [p for p in self.parameters() if p.dim() >= 2], "weight_decay": wd},
                {"params": [p for p in self.parameters() if p.dim() < 2], "weight_decay": 0.0},
            ]
            return torch.optim.AdamW(groups, lr=lr, foreach=True)

    tmp = tempfile.mkdtemp()
    options = (
        dict(
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        if lean
        else {}
    )
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp,
        num_sanity_val_steps=0,
        **options,
    )
    tr = built.data.train
    t0 = time.perf_counter()
    trainer.fit(Module(), train_dataloaders=_Batches(tr.x, tr.y, cfg.data.batch_size, cfg.seed))
    rate = steps / (time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    return rate


def _model_cfg(cfg):
    return cfg.model.config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default="digits-mlp,digits-cnn")
    ap.add_argument("--quick", action="store_true", help="1 repetition of 50 steps (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.steps = 1, 50
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.reps} reps x {args.steps} steps"
    )
    try:
        import logging

        import lightning

        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        print(f"peer: lightning {lightning.__version__}")
        peer = True
    except ImportError:
        print("peer: lightning not installed (pip install lightning): its rows are skipped")
        peer = False
    for recipe in args.recipes.split(","):
        plain_run(recipe, 50), bigtrain_run(recipe, 50, False)  # warm up allocators and caches
        rates = {"plain": [], "bigtrain loop": [], "bigtrain defaults": []}
        if peer:
            rates |= {"lightning lean": [], "lightning defaults": []}
            lightning_run(recipe, 20, True)
        for _ in range(args.reps):  # alternate so that machine noise hits every case alike
            rates["plain"].append(plain_run(recipe, args.steps))
            rates["bigtrain loop"].append(bigtrain_run(recipe, args.steps, False))
            rates["bigtrain defaults"].append(bigtrain_run(recipe, args.steps, True))
            if peer:
                rates["lightning lean"].append(lightning_run(recipe, args.steps, True))
                rates["lightning defaults"].append(lightning_run(recipe, args.steps, False))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\n{recipe}: median steps/s over {args.reps} reps")
        for k, v in med.items():
            spread = f"[{min(rates[k]):.0f}..{max(rates[k]):.0f}]"
            print(f"  {k:<18} {v:8.1f} {spread:>14}   ratio to plain {v / med['plain']:.3f}")


if __name__ == "__main__":
    main()
