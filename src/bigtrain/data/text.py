"""Text for language models: tokenizers and prepared token files.

Tokenizers (characters, or byte-level BPE trained locally) save to / load from a small JSON file
(never pickle) and share one interface: ``vocab_size``, ``encode(str) -> list[int]``,
``decode(list[int]) -> str``. :func:`prepare_text` turns text into nanoGPT-style ``train.bin`` /
``val.bin`` token files (raw uint16/uint32) that :class:`bigtrain.data.tokens.TokenWindowSampler`
reads through a memmap; :func:`prepare_cached` does it once per content hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain._io import (
    atomic_write_text,
    fsync_dir,
    remove_stale_temporaries,
    replace_folder,
    temp_dir_beside,
)
from bigtrain.data.corpus import (
    DEFAULT_CORPUS,
    load_sources,
    read_texts,
    source_fingerprint,
    source_hash,
)
from bigtrain.data.tokens import PreparedText, token_dtype
from bigtrain.errors import ConfigError, DataError, did_you_mean

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "PreparedText",
    "load_tokenizer",
    "prepare_cached",
    "prepare_text",
    "read_texts",
    "Tokenizer",
    "train_tokenizer",
]

TOKENIZER_FORMAT = 1
TOKENIZER_TYPES = ("char", "bpe")
#: pretrained models whose own tokenizer a recipe can name (data/pretrained_tokenizers.py)
PRETRAINED_TOKENIZERS = ("minilm", "smollm2")
#: Bump when prepared folders change meaning: it is part of the cache key.
PREPARED_FORMAT = 1
DEFAULT_CACHE_ROOT = Path("~/.cache/bigtrain/text")
_CACHE_NAME = re.compile(r"[0-9a-f]{20}")  # the folders prepare_cached names


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (``bigtrain._io``): never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False))


def _check_ids(ids: Sequence[int], vocab_size: int) -> np.ndarray:
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"token id {int(arr[i])} at position {i} is out of range for a vocabulary of "
            f"{vocab_size}; were these ids made by another tokenizer?"
        )
    return arr


class Tokenizer:
    """Base of bigtrain's tokenizers: JSON ``save`` / ``load`` around ``to_dict``."""

    type = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Text -> token ids."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> int64 token ids as a numpy array."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Write ``{"type": ..., "format_version": ..., ...}`` as JSON (atomically)."""
        d = {"type": self.type, "format_version": TOKENIZER_FORMAT, **self.to_dict()}
        _write_json_atomic(Path(path), d)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a file written by ``save``; DataError if it holds another kind of tokenizer."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"{path} holds a {tok.type} tokenizer, not {cls.type}")
        return tok


class CharTokenizer(Tokenizer):
    """One token per Unicode character; the vocabulary is the sorted set of training characters."""

    type = "char"

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars or any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise DataError("a char tokenizer needs a non-empty list of distinct single characters")
        self.chars = sorted(chars)
        # Sorted code points let encode look ids up with one vectorised searchsorted.
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = sorted unique characters of ``texts``."""
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        if not seen:
            raise DataError("cannot build a char tokenizer from empty text")
        return cls(seen)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> ids; an unknown character raises DataError naming it and its position."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids_clipped = np.minimum(ids, len(self._codes) - 1)
        unknown = np.flatnonzero(self._codes[ids_clipped] != codes)
        if unknown.size:
            first: dict[str, int] = {}
            for pos in unknown.tolist():
                first.setdefault(text[pos], pos)
                if len(first) == 5:
                    break
            listed = ", ".join(f"{c!r} (U+{ord(c):04X}) at position {p}" for c, p in first.items())
            raise DataError(
                f"{unknown.size} character(s) not in the char tokenizer's vocabulary of "
                f"{self.vocab_size}: {listed}; rebuild the tokenizer on text that contains them"
            )
        return ids.astype(np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text."""
        return "".join(self.chars[i] for i in _check_ids(ids, self.vocab_size).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "<dict>") -> CharTokenizer:
        if not isinstance(d.get("chars"), list):
            raise DataError(f"{path} is not a char tokenizer file (no 'chars' list)")
        return cls(d["chars"])


def _hf():
    try:
        import tokenizers
    except ImportError:
        raise DataError(
            "the BPE tokenizer needs the package 'tokenizers': run `pip install tokenizers`"
        ) from None
    return tokenizers


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2 style) trained locally with HuggingFace ``tokenizers``.

    Byte level means every string round-trips exactly and no character is ever unknown; the
    vocabulary holds the 256 byte tokens plus learned merges, so ``vocab_size >= 256``.
    """

    type = "bpe"
    MIN_VOCAB = 256

    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges on ``texts`` until ``vocab_size`` tokens (fewer if the text runs out).

        Deterministic: the same texts and vocab size give the same vocabulary and merges.
        """
        if vocab_size < cls.MIN_VOCAB:
            raise DataError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least "
                f"{cls.MIN_VOCAB} (one token per byte); use a larger --vocab-size or 'char'"
            )
        tk = _hf()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def vocab(self) -> dict[str, int]:
        """Token string (byte-level alphabet) -> id."""
        return dict(self._tok.get_vocab())

    def encode(self, text: str) -> list[int]:
        """Text -> token ids (never fails: every byte has a token)."""
        return list(self._tok.encode(text).ids)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text."""
        return self._tok.decode(_check_ids(ids, self.vocab_size).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"tokenizer": json.loads(self._tok.to_str())}  # HuggingFace's own JSON

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "<dict>") -> BPETokenizer:
        if not isinstance(d.get("tokenizer"), dict):
            raise DataError(f"{path} is not a BPE tokenizer file (no 'tokenizer' object)")
        try:
            return cls(_hf().Tokenizer.from_str(json.dumps(d["tokenizer"])))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{path}: cannot read the BPE tokenizer: {e}") from None


_CLASSES: dict[str, type[CharTokenizer] | type[BPETokenizer]] = {
    "char": CharTokenizer,
    "bpe": BPETokenizer,
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"tokenizer file {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"tokenizer file {path} holds no JSON object")
    return d


def check_tokenizer_type(name: str) -> str:
    """Return ``name`` if it is a tokenizer type, else raise ConfigError with a suggestion."""
    if name not in _CLASSES and name not in PRETRAINED_TOKENIZERS:
        raise ConfigError(
            f"unknown tokenizer '{name}'{did_you_mean(name, _CLASSES)}; "
            f"choose one of: {', '.join((*TOKENIZER_TYPES, *PRETRAINED_TOKENIZERS))}"
        )
    return name


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int | None) -> Tokenizer:
    """Build a ``char`` or ``bpe`` tokenizer from ``texts``.

    For ``char``, ``vocab_size`` is optional and only an upper bound; ``bpe`` needs it.
    """
    check_tokenizer_type(kind)
    if kind in PRETRAINED_TOKENIZERS:  # the model's own vocabulary: nothing is learned
        from bigtrain.data.pretrained_tokenizers import PretrainedTokenizer

        return PretrainedTokenizer.from_package(kind)
    if kind == "char":
        tok = CharTokenizer.train(texts)
        if vocab_size is not None and tok.vocab_size > vocab_size:
            raise DataError(
                f"the text has {tok.vocab_size} distinct characters, more than vocab_size "
                f"{vocab_size}; raise vocab_size or leave it unset for the char tokenizer"
            )
        return tok
    if vocab_size is None:
        raise ConfigError("the bpe tokenizer needs a vocab size (e.g. --vocab-size 2048)")
    return BPETokenizer.train(texts, vocab_size)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer JSON file written by ``save``; dispatches on its ``type``."""
    path = Path(path)
    d = _read_json(path)
    kind = d.get("type")
    if kind == "pretrained":
        from bigtrain.data.pretrained_tokenizers import PretrainedTokenizer

        return PretrainedTokenizer.from_dict(d, path)
    if kind not in _CLASSES:
        raise DataError(
            f"tokenizer file {path} has type {kind!r}; "
            f"expected one of: {', '.join(TOKENIZER_TYPES)}"
        )
    if d.get("format_version", TOKENIZER_FORMAT) > TOKENIZER_FORMAT:
        raise DataError(
            f"tokenizer file {path} has format version {d['format_version']}, newer than this "
            f"bigtrain understands ({TOKENIZER_FORMAT}); upgrade bigtrain"
        )
    return _CLASSES[kind].from_dict(d, path)


# ---------------------------------------------------------------- prepared token files


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} is a file; give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "meta.json").is_file():
        raise DataError(
            f"output folder {out_dir} is not empty and holds no prepared text (meta.json); "
            "refusing to overwrite it: choose another folder"
        )


def _commit(tmp: Path, out_dir: Path, replace: bool) -> None:
    """Move the finished temp folder into place (``replace``: swapping out an existing one)."""
    if replace:
        replace_folder(tmp, out_dir)
        return
    try:
        os.rename(tmp, out_dir)  # fails when another process's folder got there first
    except OSError:
        if not (out_dir / "meta.json").is_file():
            raise
        shutil.rmtree(tmp)  # it prepared the same content: keep theirs
        return
    fsync_dir(out_dir.parent)


def prepare_text(
    sources: str | Path | Sequence[tuple[str | Path, str]],
    tokenizer: str,
    vocab_size: int | None,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    progress: bool = True,
    *,
    dtype: str | None = None,
    replace: bool = True,
) -> PreparedText:
    """Train a tokenizer on text and write ``out_dir/{tokenizer.json,train.bin,val.bin,meta.json}``.

    The last ``val_fraction`` of each document's tokens goes to ``val.bin`` (so validation covers
    every document rather than only the last ones), the rest to ``train.bin``; the pieces are
    concatenated in document order with nothing in between. Token files are raw ``dtype`` arrays
    (nanoGPT's format: ``np.memmap(path, dtype, mode="r")``). Everything is written to a temp
    folder beside ``out_dir`` and renamed into place, so a failed run leaves no ``out_dir``.

    Args:
        sources: ``"shakespeare"``, a file / folder / glob, or ``(name, text)`` pairs.
        tokenizer: ``"char"`` or ``"bpe"``.
        vocab_size: BPE vocabulary size (>= 256); for ``char`` an optional upper bound.
        out_dir: folder to create (an existing prepared folder is replaced).
        val_fraction: share of each document held out, in [0, 1).
        progress: show a progress bar on stderr.
        dtype: force ``"uint16"`` or ``"uint32"`` token files (default: smallest that fits).
        replace: replace an existing prepared ``out_dir``; if False, keep it.
    """
    check_tokenizer_type(tokenizer)
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if vocab_size is not None and vocab_size > 2**32:
        token_dtype(vocab_size, dtype)  # fail before training on an impossible vocabulary
    out_dir = Path(out_dir).expanduser()
    _check_out_dir(out_dir)
    docs = load_sources(sources)
    characters = sum(len(t) for _, t in docs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir.parent, names=out_dir.name)  # left by a killed prepare
    tmp = temp_dir_beside(out_dir)
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"training {tokenizer} tokenizer", total=None)
            tok = train_tokenizer(tokenizer, [t for _, t in docs], vocab_size)
            np_dtype = token_dtype(tok.vocab_size, dtype)
            bar.update(task, description="encoding", total=characters, completed=0)
            n_train = n_val = 0
            with open(tmp / "train.bin", "wb") as ftrain, open(tmp / "val.bin", "wb") as fval:
                for _, text in docs:
                    ids = tok.encode_array(text).astype(np_dtype)
                    cut = len(ids) - int(round(len(ids) * val_fraction))
                    ids[:cut].tofile(ftrain)
                    ids[cut:].tofile(fval)
                    n_train, n_val = n_train + cut, n_val + len(ids) - cut
                    bar.advance(task, len(text))
            tok.save(tmp / "tokenizer.json")
            prepared = PreparedText(
                out_dir=out_dir,
                tokenizer=tokenizer,
                vocab_size=tok.vocab_size,
                dtype=np_dtype.name,
                n_train=n_train,
                n_val=n_val,
                characters=characters,
                files=len(docs),
                source_hash=source_hash(docs),
                val_fraction=val_fraction,
            )
            meta = {**asdict(prepared), "format_version": PREPARED_FORMAT}
            meta.pop("out_dir")
            meta["split"] = "last val_fraction of each document's tokens"
            _write_json_atomic(tmp / "meta.json", meta)
        _commit(tmp, out_dir, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return prepared


def prepare_cached(
    sources: str | Path | Sequence[tuple[str | Path, str]] | None = None,
    tokenizer: str = "char",
    vocab_size: int | None = None,
    cache_root: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    progress: bool = True,
) -> Path:
    """Prepare text once; later calls with the same content and settings return the cached folder.

    The folder is ``cache_root/<hash>/`` where the hash covers the texts, tokenizer type, vocab
    size, val fraction and the prepared-format version. ``sources=None`` means the Shakespeare
    corpus; ``cache_root`` defaults to ``~/.cache/bigtrain/text``.
    """
    check_tokenizer_type(tokenizer)
    spec = DEFAULT_CORPUS if sources is None else sources
    content, docs = source_fingerprint(spec)
    key = json.dumps([PREPARED_FORMAT, content, tokenizer, vocab_size, val_fraction])
    root = Path(cache_root if cache_root is not None else DEFAULT_CACHE_ROOT).expanduser()
    out = root / hashlib.sha256(key.encode()).hexdigest()[:20]
    if (out / "meta.json").is_file():
        return out
    remove_stale_temporaries(root, names=_CACHE_NAME)  # of any cached text, not only this one
    prepare_text(docs or spec, tokenizer, vocab_size, out, val_fraction, progress, replace=False)
    return out
