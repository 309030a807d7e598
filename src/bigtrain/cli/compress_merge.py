"""``bigtrain compress merge RUN_DIR --out OUT_DIR``: fold a LoRA run's adapters into its weights.

The result is a plain run folder (docs/transfer.md): the merged weights under the original
parameter names and the run's config.yaml without its ``lora:`` section, so eval, predict,
generate and export read it without peft. The source run is never modified.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge a LoRA run's adapters into plain weights (a new run folder)",
        description="Fold every LoRA adapter of a trained run into its Linear layer "
        "(W + alpha/r * B @ A) and write a run folder OUT_DIR with plain weights and no "
        "lora section (docs/transfer.md).",
    )
    p.add_argument("run_dir", help="a trained LoRA run folder (never modified)")
    p.add_argument("--out", required=True, help="the new run folder (must not exist or be empty)")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def unique_state(model) -> dict:
    """``model.state_dict()`` with tied tensors (GPT's and SmolLM2's head) kept once: the
    safetensors file format refuses shared storage, and loading restores the tie."""
    seen: set[tuple[int, int]] = set()
    state = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        state[name] = t
    return state


def _source_config(run_dir: Path) -> dict:
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def run(args: argparse.Namespace) -> int:
    from bigtrain.build.variant import save_variant_run
    from bigtrain.cli.eval_cmd import load_run, run_config
    from bigtrain.errors import ConfigError
    from bigtrain.transfer.lora import lora_parameter_share, merge_lora

    src, out = Path(args.run_dir), Path(args.out)
    cfg = run_config(src)  # CheckpointError when it is no run folder
    if cfg.lora is None:
        raise ConfigError(f"{src} has no LoRA adapters (its recipe has no lora: section)")
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the source run itself; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder")
    built, _ = load_run(src, args.checkpoint, cfg)
    trainer = built.trainer
    batches, split = built.test_batches, "test"
    if batches is None:  # language models: the periodic val sample (a check, not a benchmark)
        batches, split = trainer.state.val_data, "val"

    def measure() -> dict[str, float]:
        if batches is None:
            return {}
        metrics = trainer.evaluate(batches, split=split)
        return {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}

    model = trainer.state.model
    share = lora_parameter_share(model)
    before = measure()
    model = merge_lora(model)
    trainer.state.model = model
    after = measure()
    config = _source_config(src)
    config.pop("lora", None)
    info = {
        "split": split,
        "adapters": before,
        "merged": after,
        "trainable_parameters": share.trainable,
        "parameters_with_adapters": share.total,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    summary = {"name": cfg.name, "parameters": info["parameters"], "test": after,
               "test_split": split, "lora_merge": info}  # fmt: skip
    out = save_variant_run(src, out, model, [], summary, state=unique_state(model), config=config)
    if args.json:
        print(json.dumps({"out": str(out), **info}))
        return 0
    loss_a, loss_m = before.get("loss"), after.get("loss")
    line = f"merged {share.trainable:,} adapter parameters into {info['parameters']:,} weights"
    if loss_a is not None and loss_m is not None:
        line += f"; {split} loss {loss_a:.4f} with adapters, {loss_m:.4f} merged"
    print(f"{line} -> {out}")
    return 0
