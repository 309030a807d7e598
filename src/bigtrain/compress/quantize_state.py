"""Plain-tensor state for torch.ao's quantized modules (see compress/quantize.py).

Quantized modules keep packed C++ objects, quantized tensors and tuples that safetensors cannot
store. ``make_storable`` hooks a model so that ``state_dict()`` gives plain tensors only (int8
values, scales, zero points, axes) and ``load_state_dict`` accepts them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

SEP = ":"  # separates a state key from the pieces of its plain encoding (never in a module name)
_QDTYPES = {torch.int8: torch.qint8, torch.uint8: torch.quint8, torch.int32: torch.qint32}


def _encode(key: str, value: Any, out: dict[str, Any]) -> None:
    """Write ``value`` (a tensor, quantized tensor, tuple or dtype) as plain tensors."""
    if isinstance(value, torch.Tensor) and value.is_quantized:
        out[f"{key}{SEP}int"] = value.int_repr()
        if value.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            out[f"{key}{SEP}scales"] = value.q_per_channel_scales()
            out[f"{key}{SEP}zero_points"] = value.q_per_channel_zero_points()
            out[f"{key}{SEP}axis"] = torch.tensor(value.q_per_channel_axis())
        else:
            out[f"{key}{SEP}scale"] = torch.tensor(value.q_scale(), dtype=torch.float64)
            out[f"{key}{SEP}zero_point"] = torch.tensor(value.q_zero_point())
    elif isinstance(value, torch.Tensor):
        out[key] = value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            if v is not None:
                _encode(f"{key}{SEP}{i}", v, out)
    # dtypes and qschemes are fixed by the module's construction: rebuilt, not stored


def _decode(key: str, like: Any, plain: dict[str, Any]) -> Any:
    """The inverse of ``_encode``, shaped like the module's current value ``like``."""
    if isinstance(like, torch.Tensor) and like.is_quantized:
        ints = plain.pop(f"{key}{SEP}int")
        dtype = _QDTYPES[ints.dtype]
        if f"{key}{SEP}scales" in plain:
            scales, zps = plain.pop(f"{key}{SEP}scales"), plain.pop(f"{key}{SEP}zero_points")
            axis = int(plain.pop(f"{key}{SEP}axis"))
            q = torch._make_per_channel_quantized_tensor(ints, scales.double(), zps, axis)
        else:
            scale, zp = (
                float(plain.pop(f"{key}{SEP}scale")),
                int(plain.pop(f"{key}{SEP}zero_point")),
            )
            q = torch._make_per_tensor_quantized_tensor(ints, scale, zp)
        if q.dtype != dtype:
            raise ValueError(f"{key}: stored as {q.dtype}, expected {dtype}")
        return q
    if isinstance(like, torch.Tensor):
        return plain.pop(key, like)
    if isinstance(like, (tuple, list)):
        return type(like)(
            None if v is None else _decode(f"{key}{SEP}{i}", v, plain) for i, v in enumerate(like)
        )
    return like


def _rnns(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from torch.ao.nn.quantized.dynamic.modules.rnn import RNNBase

    for name, module in model.named_modules():
        if isinstance(module, RNNBase):
            yield (f"{name}." if name else ""), module


def _native_state(model: nn.Module) -> dict[str, Any]:
    model._bigtrain_native = True  # read by the state_dict hook below
    try:
        return model.state_dict()
    finally:
        model._bigtrain_native = False


def _plain_hook(model: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    if getattr(model, "_bigtrain_native", False):
        return
    for rnn_prefix, rnn in _rnns(model):  # cell params are opaque: store their weights
        key = prefix + rnn_prefix + "_all_weight_values."
        for k in [k for k in state if k.startswith(key)]:
            del state[k]
        for group in rnn._weight_bias().values():
            for name, value in group.items():
                _encode(prefix + rnn_prefix + name, value, state)
    for key in [k for k in state if k.startswith(prefix)]:
        value = state[key]
        if not (isinstance(value, torch.Tensor) and not value.is_quantized):
            del state[key]
            _encode(key, value, state)


def _load_hook(model: nn.Module, state: dict[str, Any], prefix: str, *_args: Any) -> None:
    meta = getattr(state, "_metadata", None)  # a state_dict() in memory carries versions:
    if meta is not None:  # drop them, the layout written below is the version-1 one
        for name, m in model.named_modules():
            if type(m).__module__.startswith("torch.ao.nn."):
                meta.get(prefix + name, {}).pop("version", None)
    native = _native_state(model)
    for rnn_prefix, rnn in _rnns(model):
        full = prefix + rnn_prefix
        wb = {}
        for group in rnn._weight_bias().values():
            for name, like in group.items():
                wb[name] = _decode(full + name, like, state)
        rnn.set_weight_bias(wb)
        for i, packed in enumerate(rnn._all_weight_values):
            state[f"{full}_all_weight_values.{i}.param"] = packed.param
    for key, like in native.items():
        if "_all_weight_values." in key or key.endswith("._packed_params.dtype"):
            continue  # dtype: a plain dict carries no module versions, so the layout loaded
            # is torch.ao's version-1 one, whose dtype is fixed (qint8)
        if isinstance(like, torch.Tensor) and not like.is_quantized:
            continue
        value = _decode(prefix + key, like, state)
        if key.endswith("._packed_params._packed_params"):  # version-1 layout: X.weight/bias
            base = prefix + key.removesuffix("_packed_params._packed_params")
            state[base + "weight"], state[base + "bias"] = value
        else:
            state[prefix + key] = value


def _versions_hook(model: nn.Module, _incompatible: Any) -> None:
    # dynamic modules record the loaded layout's version and pick their kernel by it
    # (reduce_range for version >= 4): the module's own version is the right one
    for m in model.modules():
        if type(m).__module__.startswith("torch.ao.nn.") and hasattr(m, "version"):
            m.version = getattr(type(m), "_version", m.version)


def make_storable(model: nn.Module) -> nn.Module:
    """Hook ``model`` so its state dict is plain tensors both ways (see the module docstring)."""
    if not getattr(model, "_bigtrain_storable", False):
        model.register_state_dict_post_hook(_plain_hook)
        model.register_load_state_dict_pre_hook(_load_hook)
        model.register_load_state_dict_post_hook(_versions_hook)
        model._bigtrain_storable = True
    return model
