"""Genre classification passages from the Shakespeare corpus, split by play."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bigtrain.data.text import CharTokenizer
from bigtrain.data.text_classification import (
    CLASS_NAMES,
    GENRE_OF_FOLDER,
    encode_for_classification,
    genre_passages,
    play_split,
    spoken_lines,
)
from bigtrain.errors import ConfigError

EXCERPT = (
    "### SCENE I. Elsinore.\n\n_FRANCISCO at his post. Enter to him BERNARDO_\n\n"
    "**BERNARDO**  \nWho's there?\n\n"
    "**FRANCISCO**  \nFor this relief much thanks: 'tis bitter cold,  \nAnd I am sick at heart.\n\n"
    "*Enter King Edward, Derby, and \nArtois.*\n\n"
    "**PAGE**  \n[Within]_  \nWho's there? _\\[Aside]_ Speak!\n\n_Exit_\n"
)


def test_spoken_lines_drop_speakers_headings_and_directions():
    assert spoken_lines(EXCERPT) == [
        "Who's there?",
        "For this relief much thanks: 'tis bitter cold,",
        "And I am sick at heart.",
        "Who's there? Speak!",
    ]


def test_play_split_is_disjoint_complete_and_seeded():
    split = play_split(test_fraction=0.25, seed=0)
    train, test = set(split["train"]), set(split["test"])
    assert not train & test and len(train | test) == 38
    for side in (train, test):  # every class on both sides
        assert {GENRE_OF_FOLDER[p.split("/")[0]] for p in side} == set(CLASS_NAMES)
    # round(17/4)=4 comedies, round(11/4)=3 histories, round(10/4)=2 tragedies held out
    assert Counter(GENRE_OF_FOLDER[p.split("/")[0]] for p in test) == {
        "comedy": 4,
        "history": 3,
        "tragedy": 2,
    }
    assert play_split(0.25, seed=0) == split and play_split(0.25, seed=1) != split
    with pytest.raises(ConfigError):
        play_split(test_fraction=0.0)


def test_passages_come_only_from_their_split_plays():
    from bigtrain.data.corpus import shakespeare_files

    split = play_split(seed=0)
    passages_of: dict[str, set[str]] = {}
    for f in shakespeare_files():
        lines = spoken_lines(f.read_text(encoding="utf-8"))
        n = len(lines) // 4 * 4
        passages_of[f"{f.parent.name}/{f.stem}"] = {
            "\n".join(lines[i : i + 4]) for i in range(0, n, 4)
        }
    test_texts, test_labels, names = genre_passages(4, seed=0, split="test")
    assert names == list(CLASS_NAMES)
    allowed = {}
    for play in split["test"]:
        for t in passages_of[play]:
            allowed[t] = CLASS_NAMES.index(GENRE_OF_FOLDER[play.split("/")[0]])
    assert len(test_texts) == sum(len(passages_of[p]) for p in split["test"])
    assert all(allowed[t] == y for t, y in zip(test_texts, test_labels))
    train_texts, _, _ = genre_passages(4, seed=0, split="train", max_per_class=500)
    assert not set(train_texts) & set(test_texts)


def test_max_per_class_balances_and_is_deterministic():
    a = genre_passages(2, seed=3, split="train", max_per_class=100)
    b = genre_passages(2, seed=3, split="train", max_per_class=100)
    assert a == b and Counter(a[1]) == {0: 100, 1: 100, 2: 100}
    assert all(t.count("\n") == 1 for t in a[0])  # two lines per passage


def test_encode_for_classification_truncates_and_pads():
    tok = CharTokenizer.train(["abcdef"])
    out = encode_for_classification(["abc", "abcdefabcdef", ""], tok, block_size=5, pad_id=9)
    assert out.dtype == torch.long and out.shape == (3, 5)
    assert out.tolist() == [[0, 1, 2, 9, 9], [0, 1, 2, 3, 4], [9, 9, 9, 9, 9]]
