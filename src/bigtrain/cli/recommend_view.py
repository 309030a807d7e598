"""`bigtrain predict RUN_DIR --user ID [--top-k K]` and `bigtrain predict RUN_DIR pairs.csv` for
recommender runs: top-K items for a user (with titles), or scores of (user, item) pairs."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch

from bigtrain.errors import ConfigError, DataError


def _integer_id(text: str, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{what} must be an integer id, got {text!r}") from None


def _emit(header: list[str], rows: list[list], out: str | None, what: str) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if out:
        from bigtrain._io import atomic_write_text

        atomic_write_text(Path(out), buffer.getvalue())
        print(f"{len(rows)} {what} -> {out}", file=sys.stderr)
    else:
        sys.stdout.write(buffer.getvalue())


def _read_pairs(path: Path, user_column: str, item_column: str) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        names = []
        for wanted, fallback in ((user_column, "user"), (item_column, "item")):
            name = wanted if wanted in columns else fallback if fallback in columns else None
            if name is None:
                raise DataError(
                    f"{path}: no column '{wanted}' (or '{fallback}'); it has "
                    f"{', '.join(columns) or 'no header'}"
                )
            names.append(name)
        for line, row in enumerate(reader, start=2):
            for name, into in zip(names, (users, items)):
                text = (row[name] or "").strip()
                try:
                    into.append(int(text))
                except ValueError:
                    what = "is empty" if not text else f"is {text!r}, not an integer id"
                    raise DataError(f"{path} line {line}: column '{name}' {what}") from None
    if not users:
        raise DataError(f"{path} holds no (user, item) pairs")
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)


def run_recommend(args: argparse.Namespace, cfg) -> int:
    """Top-K recommendations for ``--user`` or scores for the pairs of ``args.input``."""
    from bigtrain.cli.eval_cmd import _check_out, load_run
    from bigtrain.data.files import existing_file
    from bigtrain.tasks import RatingTask

    if (args.user is None) == (args.input is None):
        raise ConfigError(
            f"predict on the recommender run {args.run_dir} takes either --user ID (its top-K "
            "items) or a CSV of (user, item) pairs to score"
        )
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {args.top_k}")
    if args.out:
        _check_out(Path(args.out))
    user_id = _integer_id(args.user, "--user") if args.user is not None else None
    if args.input is not None:
        existing_file(args.input, "pairs file")  # before the (slower) rebuild of the run
    built, _ = load_run(args.run_dir, cfg=cfg)
    data = built.data
    model = built.trainer.strategy.unwrap(built.trainer.state.model)
    model.eval()
    warm_users, warm_items = built.extras["warm_users"], built.extras["warm_items"]
    rating = isinstance(built.task, RatingTask)
    if user_id is not None:
        return _top_k(args, data, model, user_id, warm_items)
    users, items = _read_pairs(Path(args.input), cfg.data.user_column, cfg.data.item_column)
    user_rows = np.array([data.user_row(int(u)) for u in users], dtype=np.int64)
    item_rows = data.item_rows(items)
    x = torch.from_numpy(np.stack([user_rows, item_rows], axis=1))
    with torch.no_grad():
        scores = model(x).float().tolist()
    rows = []
    for u, i, ur, ir, s in zip(users, items, user_rows, item_rows, scores):
        cold = [w for w, known in (("user", warm_users[ur]), ("item", warm_items[ir])) if not known]
        rows.append([int(u), int(i), f"{s:.4f}", "+".join(cold)])
    score_name = "predicted_rating" if rating else "score"
    _emit(["user", "item", score_name, "cold_start"], rows, args.out, "scores")
    return 0


def _top_k(args, data, model, user_id: int, warm_items: torch.Tensor) -> int:
    row = data.user_row(user_id)
    if row == 0:
        ids = data.user_ids
        raise DataError(
            f"user {user_id} is not in the data ({len(ids)} users, ids {ids.min()}..{ids.max()})"
        )
    if args.top_k > data.n_items:
        raise ConfigError(f"--top-k {args.top_k} is larger than the {data.n_items} items")
    with torch.no_grad():
        scores = model.score_all(torch.tensor([row]))[0].float()
    scores[0] = -torch.inf  # the padding row
    rated = torch.from_numpy(data.rated.get(row, np.zeros(0, np.int64)))
    scores[rated] = -torch.inf  # recommend only what the user has not rated
    k = min(args.top_k, data.n_items - len(rated))
    if k < args.top_k:
        print(f"user {user_id} rated all but {k} items: showing those", file=sys.stderr)
    top = scores.topk(k)
    cat = data.catalogue
    rows = []
    for rank, (score, item_row) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        i = item_row - 1
        year = int(cat.years[i])
        rows.append([
            rank, int(cat.item_ids[i]), cat.titles[i], year if year >= 0 else "",
            "|".join(cat.genres[i]), f"{score:.4f}", "" if warm_items[item_row] else "item",
        ])  # fmt: skip
    header = ["rank", "item", "title", "year", "genres", "score", "cold_start"]
    if args.out:
        _emit(header, rows, args.out, "recommendations")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"top {k} for user {user_id} ({len(rated)} items rated)")
    for name in header:
        table.add_column(name, justify="right" if name in ("rank", "score", "year") else "left")
    for r in rows:
        table.add_row(*map(str, r))
    Console().print(table)
    return 0
