"""``bigtrain data prepare``: text -> tokenizer + nanoGPT-style token files."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="prepare data sets (tokenize text)")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="train a tokenizer on text and write train.bin / val.bin token files",
        description=(
            "Train a char or byte-level BPE tokenizer on text and write OUT/{tokenizer.json, "
            "train.bin, val.bin, meta.json}. The last --val-fraction of each file goes to val.bin."
        ),
    )
    prep.add_argument(
        "--text",
        required=True,
        metavar="PATH_OR_GLOB",
        help="a text file, a folder (*.txt, *.md recursively), a glob, or 'shakespeare'",
    )
    prep.add_argument("--tokenizer", default="char", help="char (default) or bpe")
    prep.add_argument(
        "--vocab-size", type=int, default=None, help="BPE vocabulary size (>= 256); char: a limit"
    )
    prep.add_argument("--out", required=True, metavar="DIR", help="output folder")
    prep.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of each file held out (0.1)"
    )
    prep.add_argument(
        "--dtype",
        choices=["uint16", "uint32"],
        default=None,
        help="token file dtype (default: uint16 when the vocabulary fits, else uint32)",
    )
    prep.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    prep.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain.data.text import prepare_text

    prepared = prepare_text(
        args.text,
        args.tokenizer,
        args.vocab_size,
        args.out,
        val_fraction=args.val_fraction,
        progress=not args.no_progress,
        dtype=args.dtype,
    )
    table = Table(title="prepared text", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = [
        ("files", f"{prepared.files:,}"),
        ("characters", f"{prepared.characters:,}"),
        ("tokenizer", prepared.tokenizer),
        ("vocab size", f"{prepared.vocab_size:,}"),
        ("train tokens", f"{prepared.n_train:,}"),
        ("val tokens", f"{prepared.n_val:,}"),
        ("dtype", prepared.dtype),
        ("out dir", str(prepared.out_dir)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console(soft_wrap=True).print(table)
    return 0
