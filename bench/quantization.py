"""torch.ao vs torchao int8 on CPU, side by side: latency at batch 1 and 32, output error vs fp32.

For each model (the small GPT of recipe shakespeare-char and the digits MLP, from trained run
folders when given, else freshly initialised at the recipe's sizes), it times one forward pass
(median over repeats, models alternating per repeat so a noisy neighbour hurts all alike,
``torch.set_num_threads`` fixed) of:

* fp32 eager,
* torch.ao dynamic int8 (``bigtrain compress quantize --method dynamic``: fbgemm kernels),
* torchao ``Int8DynamicActivationInt8WeightConfig`` and ``Int8WeightOnlyConfig`` (eager: the
  tensor-subclass dispatch without ``torch.compile``),

and prints medians, ratios to fp32 and the max abs difference of the outputs from fp32.

    python bench/quantization.py [--gpt-run runs/gpt] [--mlp-run runs/mlp] --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch


def _models(gpt_run: str | None, mlp_run: str | None):
    from bigtrain.models import build_model

    out = []
    for name, run, params, shape, n_out, example in (
        ("gpt (shakespeare-char)", gpt_run,
         {"n_layer": 3, "n_head": 4, "n_embd": 144, "block_size": 64, "bias": False,
          "position": "rotary"}, (64,), 65, lambda: torch.randint(0, 65, (1, 64))),
        ("mlp (digits-mlp)", mlp_run, {"hidden": [256, 128]}, (64,), 10,
         lambda: torch.randn(1, 64)),
    ):  # fmt: skip
        if run:
            from bigtrain.cli.compress_quantize import cpu_config
            from bigtrain.cli.eval_cmd import load_run, run_config

            built, _ = load_run(run, cfg=cpu_config(run_config(run)))
            model = built.trainer.state.model
        else:
            torch.manual_seed(0)
            model = build_model(name.split()[0], params, shape, n_out)
        out.append((name, model.eval(), example()))
    return out


def _first(y):
    return y[0] if isinstance(y, tuple) else y


def _variants(model):
    from bigtrain.compress.quantize import quantize_dynamic_int8

    variants = {"fp32": model}
    variants["torch.ao dynamic int8"] = quantize_dynamic_int8(copy.deepcopy(model))[0]
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        for label, config in (
            ("torchao int8 dyn-act", Int8DynamicActivationInt8WeightConfig()),
            ("torchao int8 weight-only", Int8WeightOnlyConfig()),
        ):
            m = copy.deepcopy(model)
            quantize_(m, config)
            variants[label] = m
    except ImportError:
        print("torchao not installed: pip install torchao")
    return variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpt-run")
    p.add_argument("--mlp-run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}")
    for name, model, example in _models(args.gpt_run, args.mlp_run):
        variants = _variants(model)
        for b in (1, 32):
            x = example.repeat(b, *([1] * (example.ndim - 1)))
            with torch.inference_mode():
                ref = _first(model(x)).float()
                diffs = {
                    k: float((_first(m(x)).float() - ref).abs().max()) for k, m in variants.items()
                }
                for m in variants.values():  # warm-up
                    for _ in range(3):
                        m(x)
                times = {k: [] for k in variants}
                for _ in range(args.repeats):
                    for k, m in variants.items():
                        t0 = time.perf_counter()
                        m(x)
                        times[k].append(time.perf_counter() - t0)
            base = statistics.median(times["fp32"])
            print(f"\n{name}, batch {b}")
            print(f"  {'variant':28s} {'ms':>9s} {'x fp32':>7s} {'max|dy|':>9s}")
            for k in variants:
                med = statistics.median(times[k])
                print(f"  {k:28s} {med * 1e3:9.3f} {med / base:7.2f} {diffs[k]:9.4f}")


if __name__ == "__main__":
    main()
