"""`bigtrain generate RUN_DIR --prompt ... --max-new-tokens N --temperature T --top-k K --top-p P`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a trained language model",
        description="Load a language-model run's best checkpoint and tokenizer and "
        "continue a prompt (KV-cached sampling; --seed makes it reproducible).",
    )
    p.add_argument("run_dir")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--no-cache", action="store_true", help="recompute attention each token")
    p.set_defaults(func=run)


def load_language_model(run_dir: str | Path, checkpoint: str = "best"):
    """(model in eval mode, tokenizer) of a language-model run folder, without loading its data."""
    from bigtrain.build import LANGUAGE_MODELS, model_block_size
    from bigtrain.build.variant import restore_variant
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.cli.eval_cmd import run_config
    from bigtrain.core.checkpoint import load_weights
    from bigtrain.data.text import load_tokenizer
    from bigtrain.errors import CheckpointError, ConfigError
    from bigtrain.models import build_model

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    name = cfg.model.name
    if name not in LANGUAGE_MODELS:
        raise ConfigError(f"{run_dir} trained a '{name}' model, not a language model")
    tok_file = run_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise CheckpointError(f"{run_dir} has no tokenizer.json")
    tokenizer = load_tokenizer(tok_file)
    model = build_model(name, cfg.model.config, (model_block_size(cfg),), tokenizer.vocab_size)
    ckpt = best_weights(run_dir, checkpoint)
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no checkpoint")
    model = restore_variant(model, run_dir)  # a compressed variant (bigtrain compress ...)
    if cfg.lora is not None:  # a LoRA run's checkpoint holds base and adapter weights
        from bigtrain.build.lora import recipe_adapters

        model = recipe_adapters(model, cfg)
    load_weights(ckpt, model)
    return model.eval(), tokenizer


def check_args(args: argparse.Namespace) -> None:
    """ConfigError naming the first sampling option out of range (before any model is loaded)."""
    import math

    from bigtrain.errors import ConfigError

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {args.num_samples}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(
            f"--temperature must be a number >= 0 (0 = greedy), got {args.temperature}"
        )
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(
            f"--top-k must be >= 1 (leave it out to sample from all), got {args.top_k}"
        )
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")


def run(args: argparse.Namespace) -> int:
    import torch

    from bigtrain.errors import DataError
    from bigtrain.models.generate import generate

    check_args(args)
    model, tokenizer = load_language_model(args.run_dir, args.checkpoint)
    ids = tokenizer.encode(args.prompt)  # DataError names characters it does not know
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block is not None and len(ids) > block:
        raise DataError(
            f"the prompt is {len(ids)} tokens, longer than the model's context of {block} tokens"
        )
    if not ids:
        raise DataError("the prompt encodes to no tokens; give at least one character")
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long)
    with torch.no_grad():
        out = generate(
            model,
            idx,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            generator=gen,
            use_cache=not args.no_cache,
        )
    for i, row in enumerate(out.tolist()):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(tokenizer.decode(row) + "\n")
    return 0
