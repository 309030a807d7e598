"""DDP scaling on this machine: 1 process x 2 threads against 2 processes x 1 thread (gloo).

For the digits MLP and shakespeare-char, each repetition runs three cases in turn (the order
reversed every other repetition, so machine noise hits every case alike):

* ``1 process x 2 threads``: the single-device strategy;
* ``2 processes x 1 thread (DDP)``: DistributedDataParallel over gloo on the same global batch
  (``data.batch_size`` is split across the processes, so every case does the same work per step);
* ``2 processes x 1 thread, no_sync``: the same DDP run with every micro-batch inside DDP's
  ``no_sync()``. Not real training (each process steps on its own half-batch gradient), only a
  measurement: its step-time difference to the DDP case is what the gradient all-reduce costs
  per step, overlap with backward included.

Each case is a fresh worker process (started with torchrun's variables, as
tests/distributed/test_two_processes.py does, OMP_NUM_THREADS set to its threads) that builds the
recipe with ``bigtrain.build``, trains warm-up steps, then times a window of steps with a
callback on rank 0 (ranks are in lockstep). The 2-process worker also times a bare
``torch.distributed.all_reduce`` of one flat float32 tensor as large as the model (median over
``--allreduce-calls`` calls) before training: the all-reduce of the gradients alone. Reported per
model: median steps/s, samples/s (tokens/s for the language model) with min..max over
repetitions, the ratio to 1 process, and the communication cost per DDP step: "all-reduce per
step" (DDP minus no_sync step time, paired within each repetition), its share of a DDP step, and
the bare all_reduce of the model's size. Run it on an otherwise idle machine: a busy core stalls
the 2-thread case far more than the 1-thread processes. Tokens are prepared once, before any
timing, in bigtrain's cache (or ``--cache-dir``).

    python bench/ddp_scaling.py                  # 5 repetitions of both models (~5-10 min)
    python bench/ddp_scaling.py --reps 7 --models shakespeare-char
    python bench/ddp_scaling.py --quick          # a smoke run (1 repetition, a few steps)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigtrain.distributed.launch import free_port

#: recipe -> (label, warm-up steps, timed steps, quick warm-up, quick timed)
MODELS = {
    "digits-mlp": ("digits MLP", 50, 2000, 3, 30),
    "shakespeare-char": ("shakespeare-char GPT", 20, 200, 2, 4),
}
CASES = {
    "single": "1 process x {t} threads",
    "ddp": "2 processes x {h} thread (DDP)",
    "nosync": "2 processes x {h} thread, no gradient all-reduce (no_sync)",
}
#: overrides of every case: no evaluation, progress bar or health checks while timing
COMMON = [
    "trainer.max_epochs=null",
    "trainer.eval_every=100000",
    "trainer.progress=false",
    "trainer.health.check_every=0",
]
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---------------------------------------------------------------------------- worker side
def recipe_overrides(recipe: str, steps: int, threads: int, cache_dir: str | None) -> list[str]:
    extra = [f"trainer.max_steps={steps}", f"trainer.threads={threads}"]
    if recipe.startswith("shakespeare"):
        extra.append("trainer.compile=false")
        extra += [f"data.cache_dir={cache_dir}"] if cache_dir else []
    return [*COMMON, *extra]


def time_all_reduce(numel: int, calls: int) -> float:
    """Median milliseconds of one blocking all_reduce of ``numel`` float32 values."""
    import torch
    import torch.distributed as dist

    x = torch.ones(numel, dtype=torch.float32)
    for _ in range(5):  # first calls set up gloo's buffers and connections
        dist.all_reduce(x)
    dist.barrier()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def weights_spread(trainer) -> float:
    """Largest difference of any weight between the processes (0.0: in step)."""
    import torch
    import torch.distributed as dist

    params = trainer.strategy.unwrap(trainer.state.model).parameters()
    flat = torch.cat([p.detach().float().reshape(-1) for p in params])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return float((hi - lo).max())


def worker(args: argparse.Namespace) -> None:
    """Train ``args.cases`` in this process (one of 1 or 2) and write rank 0's results."""
    from bigtrain.build import build
    from bigtrain.config import load_recipe
    from bigtrain.core.callback import Callback, CallbackList
    from bigtrain.distributed import destroy_process_group

    class StepTimer(Callback):
        """perf_counter at the end of step ``warmup`` and of the last timed step."""

        def __init__(self, warmup: int, steps: int) -> None:
            self.warmup, self.last, self.t0, self.t1 = warmup, warmup + steps, None, None

        def on_after_step(self, state) -> None:
            if state.step == self.warmup:
                self.t0 = time.perf_counter()
            elif state.step == self.last:
                self.t1 = time.perf_counter()

    results: dict = {}
    strategy = None
    for i, case in enumerate(args.cases.split(",")):
        cfg = load_recipe(
            args.model,
            recipe_overrides(args.model, args.warmup + args.steps, args.threads, args.cache_dir),
        )
        built = build(cfg, run_dir=None, quiet=True)
        trainer = built.trainer
        strategy = trainer.strategy
        trainer.state.val_data = None  # training speed only: no evaluation at the last step
        model = strategy.unwrap(trainer.state.model)
        numel = sum(p.numel() for p in model.parameters())  # tied weights once
        if i == 0:
            results["meta"] = {
                "params": numel,
                # what DDP broadcasts before each forward: persistent buffers only (bigtrain
                # skips derived ones such as the GPT's rotary tables)
                "buffers": sum(
                    b.numel() for n, b in model.named_buffers() if n in model.state_dict()
                ),
                "batch_size": cfg.data.batch_size,
                "tokens_per_step": cfg.data.batch_size * built.extras["block_size"]
                if "block_size" in built.extras
                else None,
                "precision": getattr(strategy, "precision", "?"),
                "threads": args.threads,
            }
            if strategy.world_size > 1:
                results["all_reduce_ms"] = time_all_reduce(numel, args.allreduce_calls)
                results["latency_ms"] = time_all_reduce(1, args.allreduce_calls)
        if case == "nosync":
            ddp = trainer.state.model
            strategy.gradient_sync = lambda last, ddp=ddp: ddp.no_sync()  # every micro-batch
        timer = StepTimer(args.warmup, args.steps)
        trainer.callbacks = CallbackList({**trainer.callbacks.named, "timer": timer})
        trainer.fit()
        if timer.t0 is None or timer.t1 is None:
            raise RuntimeError(f"{case}: training stopped at step {trainer.state.step}")
        entry = {"steps_per_s": args.steps / (timer.t1 - timer.t0)}
        if strategy.world_size > 1:
            spread = weights_spread(trainer)
            entry["weights_spread"] = spread
            if case == "ddp" and spread > 1e-6:
                raise RuntimeError(f"DDP left the processes' weights apart by {spread:g}")
            if case == "nosync" and spread == 0.0:
                raise RuntimeError("no_sync: the weights stayed equal, gradients were all-reduced")
        results[case] = entry
        del built, trainer, model
        gc.collect()
    if strategy is not None and strategy.is_main:
        Path(args.out).write_text(json.dumps(results))
    destroy_process_group()


# ---------------------------------------------------------------------------- orchestrator
def launch(args, model: str, cases: list[str], world: int, tmp: Path) -> dict:
    """Run ``cases`` in ``world`` worker processes; their results, or exit with their output."""
    warmup, steps = args.plan[model]
    threads = args.threads if world == 1 else max(1, args.threads // world)
    out = tmp / "result.json"
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        ",".join(cases),
        "--model",
        model,
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
        "--allreduce-calls",
        str(args.allreduce_calls),
        "--out",
        str(out),
        *(["--cache-dir", args.cache_dir] if args.cache_dir else []),
    ]
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    base["OMP_NUM_THREADS"] = str(threads)
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        env = dict(base)
        if world > 1:
            env |= {
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }
        log = tmp / f"worker{rank}.log"
        logs.append(log)
        with open(log, "w") as f:  # a file, not a pipe: a chatty worker never blocks
            procs.append(subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + args.timeout
    problem = ""
    try:
        for rank, p in enumerate(procs):
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problem = f"rank {rank} still running after --timeout {args.timeout:.0f} s"
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    failed = [(rank, p.returncode) for rank, p in enumerate(procs) if p.returncode != 0]
    if not problem and failed:
        problem = f"workers failed (rank, exit status): {failed}"
    if not problem and not out.exists():
        problem = "the workers wrote no results"
    if problem:
        print(f"\n{model} {'+'.join(cases)} on {world} process(es): {problem}", file=sys.stderr)
        for rank, log in enumerate(logs):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"--- rank {rank} output (tail) ---\n{tail}", file=sys.stderr)
        sys.exit(1)
    return json.loads(out.read_text())


def spread(values: list[float], fmt: str) -> str:
    return f"{min(values):{fmt}}..{max(values):{fmt}}"


def report(args, model: str, runs: list[dict]) -> None:
    """Print one model's table and communication figures (medians over repetitions)."""
    label = MODELS[model][0]
    warmup, steps = args.plan[model]
    meta = runs[0]["meta"]
    half = max(1, args.threads // 2)
    rates = {case: [r[case]["steps_per_s"] for r in runs] for case in CASES}
    med = {case: statistics.median(v) for case, v in rates.items()}
    tokens, batch = meta["tokens_per_step"], meta["batch_size"]
    shape = f"{batch} x {tokens // batch} tokens" if tokens else f"{batch}"
    print(
        f"\n### {label} (`{model}`): {meta['params']:,} parameters, global batch {shape}, "
        f"{meta['precision']}; {steps} timed steps after {warmup}, median of {len(runs)} reps\n"
    )
    head = "| case | steps/s (median) | range | samples/s (median) |"
    head += " tokens/s (median) |" if tokens else ""
    print(head + " ratio to 1 process |")
    print("|---" * (6 if tokens else 5) + "|")
    for case, name in CASES.items():
        row = f"| {name.format(t=args.threads, h=half)} | {med[case]:.1f} |"
        row += f" {spread(rates[case], '.1f')} | {med[case] * batch:,.0f} |"
        row += f" {med[case] * tokens:,.0f} |" if tokens else ""
        print(row + f" {med[case] / med['single']:.3f} |")
    step_ms = {case: 1000 / v for case, v in med.items()}
    # paired per repetition: the DDP and no_sync runs of one repetition share a worker pair
    comm = [1000 / r["ddp"]["steps_per_s"] - 1000 / r["nosync"]["steps_per_s"] for r in runs]
    share = [
        100 * (1 - r["ddp"]["steps_per_s"] / r["nosync"]["steps_per_s"]) for r in runs
    ]  # (DDP - no_sync) / DDP step time
    bare = [r["all_reduce_ms"] for r in runs]
    latency = [r["latency_ms"] for r in runs]
    mb = meta["params"] * 4 / 1e6
    print(
        f"\n- step time (medians): 1 process {step_ms['single']:.2f} ms, DDP "
        f"{step_ms['ddp']:.2f} ms, DDP no_sync {step_ms['nosync']:.2f} ms"
    )
    print(
        f"- all-reduce per step (DDP - no_sync), ms (median): **{statistics.median(comm):.2f}**"
        f" [{spread(comm, '.2f')}]; all-reduce share of a DDP step: "
        f"**{statistics.median(share):.1f}%** [{spread(share, '.1f')}]"
    )
    print(
        f"- bare all_reduce of {meta['params']:,} float32 params ({mb:.2f} MB), ms (median of "
        f"{args.allreduce_calls} calls, median over reps): **{statistics.median(bare):.2f}** "
        f"[{spread(bare, '.2f')}]"
    )
    print(
        f"- bare all_reduce of 1 value (latency; every DDP step also does two, in both DDP "
        f"cases: agreeing on a stop and on a non-finite loss): {statistics.median(latency):.3f} ms "
        f"[{spread(latency, '.3f')}]"
    )
    if meta["buffers"]:
        print(
            f"- DDP also broadcasts the model's {meta['buffers']:,} buffer values before each "
            "synced forward (skipped under no_sync, so counted in the difference)"
        )
    ddp_spread = max(r["ddp"]["weights_spread"] for r in runs)
    nosync_spread = min(r["nosync"]["weights_spread"] for r in runs)
    print(
        f"- checks: after DDP the processes' weights differ by at most {ddp_spread:g}; after "
        f"no_sync by at least {nosync_spread:.2g} (no all-reduce happened)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="alternated repetitions")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated recipes")
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process case")
    parser.add_argument("--digits-steps", type=int, default=MODELS["digits-mlp"][2])
    parser.add_argument("--digits-warmup", type=int, default=MODELS["digits-mlp"][1])
    parser.add_argument("--lm-steps", type=int, default=MODELS["shakespeare-char"][2])
    parser.add_argument("--lm-warmup", type=int, default=MODELS["shakespeare-char"][1])
    parser.add_argument("--allreduce-calls", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker launch")
    parser.add_argument("--cache-dir", help="token cache (default: bigtrain's, ~/.cache/bigtrain)")
    parser.add_argument("--quick", action="store_true", help="1 repetition, a few steps")
    parser.add_argument("--worker", metavar="CASES", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.cases = args.worker
        worker(args)
        return

    start = time.perf_counter()
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    if args.quick:
        args.reps = 1
        args.plan = {m: MODELS[m][3:5] for m in models}
    else:
        args.plan = {
            "digits-mlp": (args.digits_warmup, args.digits_steps),
            "shakespeare-char": (args.lm_warmup, args.lm_steps),
        }
    if min(w for w, _ in args.plan.values()) < 1 or min(s for _, s in args.plan.values()) < 1:
        parser.error("warm-up and timed steps must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    try:
        import torch

        from bigtrain.build import prepared_folder
        from bigtrain.config import load_recipe

        print(
            f"torch {torch.__version__}, gloo, {os.cpu_count()} cores; 1 process x "
            f"{args.threads} threads vs 2 processes x {max(1, args.threads // 2)} thread; "
            f"{args.reps} reps{' (--quick: a smoke run, not a benchmark)' if args.quick else ''}",
            flush=True,
        )
        load = os.getloadavg()[0]
        if load > 0.5:
            print(
                f"warning: load average {load:.2f} at start: other work on the machine slows "
                "the 2-thread case most (its threads wait for each other)",
                flush=True,
            )
        for model in models:
            if model.startswith("shakespeare"):  # tokens prepared once, before any timing
                cfg = load_recipe(model, recipe_overrides(model, 1, args.threads, args.cache_dir))
                prepared_folder(cfg, quiet=True)
            runs = []
            for rep in range(args.reps):  # the order reversed every other repetition
                order = [["single"], ["ddp", "nosync"]]
                if rep % 2:
                    order = [["nosync", "ddp"], ["single"]]
                run: dict = {}
                t0 = time.perf_counter()
                for cases in order:
                    run |= launch(args, model, cases, 1 if cases == ["single"] else 2, tmp)
                runs.append(run)
                rates = ", ".join(f"{c} {run[c]['steps_per_s']:.1f}" for c in CASES)
                took = time.perf_counter() - t0
                print(
                    f"  {model} rep {rep + 1}/{args.reps}: steps/s {rates} ({took:.0f} s)",
                    flush=True,
                )
            report(args, model, runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
