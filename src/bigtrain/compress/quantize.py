"""Int8 quantization as plain functions on any ``nn.Module`` (docs/quantization.md).

Three methods, all through ``torch.ao.quantization`` (fbgemm/x86 kernels on CPU; docs explain
why not torchao here):

* ``quantize_dynamic_int8``: Linear/LSTM/GRU weights stored as int8, activations quantized on
  the fly. Works on every model; nothing to calibrate.
* ``quantize_static_int8``: FX graph mode, weights *and* activations int8, activation ranges
  observed on calibration batches (Linear, Conv, fused Conv/Linear+BN+ReLU).
* ``prepare_qat`` / ``convert_prepared``: fake quantization during training, then int8.

Quantized modules keep their state as packed objects, quantized tensors and tuples that
safetensors cannot store. ``make_storable`` (quantize_state.py) hooks the model so that
``state_dict()`` gives plain tensors only (int8 values + scale + zero point) and
``load_state_dict`` accepts them back: a variant saves and loads like any run, never unpickled.
``restore_quantized(model, step)`` rebuilds the quantized structure on a freshly built model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from bigtrain.compress.quantize_state import make_storable
from bigtrain.errors import ConfigError

#: layer types each method turns into int8 kernels on CPU (name -> class)
DYNAMIC_TYPES: dict[str, type[nn.Module]] = {
    "linear": nn.Linear,
    "lstm": nn.LSTM,
    "gru": nn.GRU,
}
STATIC_TYPES: dict[str, type[nn.Module]] = {
    "linear": nn.Linear,
    "conv1d": nn.Conv1d,
    "conv2d": nn.Conv2d,
    "conv3d": nn.Conv3d,
}
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


@contextlib.contextmanager
def quiet_ao() -> Iterator[None]:
    """Silence torch.ao's deprecation notice and its per-observer reduce_range notes: bigtrain
    chose torch.ao on measurement (docs/quantization.md) and pins the torch it runs on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*quant_min and quant_max.*")
        warnings.filterwarnings("ignore", message=".*must run observer before.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.ao")
        yield


def layer_types(names: Iterable[str], method: str) -> tuple[type[nn.Module], ...]:
    """Layer classes for ``names`` (e.g. ``["linear", "lstm"]``); ConfigError naming a type the
    method's CPU kernels do not support."""
    table = DYNAMIC_TYPES if method == "dynamic" else STATIC_TYPES
    out = []
    for name in names:
        key = name.lower()
        if key not in table:
            raise ConfigError(
                f"{method} int8 quantization on CPU does not support layer type '{name}' "
                f"(supported: {', '.join(table)})"
            )
        out.append(table[key])
    return tuple(out)


def _tied(model: nn.Module) -> set[int]:
    """ids of parameters held by more than one module (a GPT head tied to its embedding)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def quantizable_layers(
    model: nn.Module, types: Sequence[type[nn.Module]], exclude: Sequence[str] = ()
) -> list[str]:
    """Names of the modules of exactly ``types`` to quantize, skipping names matching an
    ``exclude`` glob and layers whose weight is tied to another module's (quantizing one copy
    would store the weight twice and break the tie)."""
    tied = _tied(model)
    names = []
    for name, module in model.named_modules():
        if type(module) not in types or any(fnmatch.fnmatch(name, g) for g in exclude):
            continue
        if any(id(p) in tied for p in module.parameters(recurse=False)):
            continue
        names.append(name)
    return names


def _nothing_to_quantize(model: nn.Module, types: Sequence[type[nn.Module]]) -> ConfigError:
    kinds = ", ".join(t.__name__ for t in types)
    return ConfigError(f"{type(model).__name__} has no {kinds} layer to quantize (nothing done)")


def quantize_dynamic_int8(
    model: nn.Module,
    types: Sequence[type[nn.Module]] = (nn.Linear, nn.LSTM, nn.GRU),
    exclude: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Dynamic int8 (per-tensor weights) of ``model``'s layers of ``types``, in place.

    Returns the model and the variant step that rebuilds its structure (``restore_quantized``).
    Layers are chosen by name, so an LSTM inside any parent module is quantized (torch.ao's own
    type-based pass skips a bare ``nn.LSTM`` given as the model itself; callers pass models).
    """
    names = quantizable_layers(model, types, exclude)
    if not names:
        raise _nothing_to_quantize(model, types)
    step = {"kind": "quantize_dynamic", "modules": names, "dtype": "qint8"}
    return _apply_dynamic(model, names), step


def _apply_dynamic(model: nn.Module, names: Sequence[str]) -> nn.Module:
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    model.eval()
    with quiet_ao():
        model = quantize_dynamic(model, {n: default_dynamic_qconfig for n in names}, inplace=True)
    return make_storable(model)


def _qconfig_mapping(backend: str, qat: bool, observer: str = "moving_average"):
    from torch.ao import quantization as tq

    if not qat:
        return tq.get_default_qconfig_mapping(backend)
    mapping = tq.get_default_qat_qconfig_mapping(backend)
    if observer == "minmax":  # the running min/max instead of torch.ao's moving average
        act = tq.FakeQuantize.with_args(
            observer=tq.MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
            reduce_range=backend in ("x86", "fbgemm"),
        )  # fmt: skip
        mapping.set_global(
            tq.QConfig(activation=act, weight=tq.default_per_channel_weight_fake_quant)
        )
    return mapping


def freeze_qat(model: nn.Module, observers: bool = False, batch_norm: bool = False) -> None:
    """Stop a QAT model's ranges (``observers``) and/or BatchNorm statistics from updating."""
    from torch.ao.nn.intrinsic import qat as nniqat
    from torch.ao.quantization import disable_observer

    if observers:
        model.apply(disable_observer)
    if batch_norm:
        model.apply(nniqat.freeze_bn_stats)


def _check_static_layers(model: nn.Module, method: str) -> list[str]:
    names = quantizable_layers(model, tuple(STATIC_TYPES.values()))
    if not names:
        raise _nothing_to_quantize(model, tuple(STATIC_TYPES.values()))
    for name, module in model.named_modules():
        if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN, nn.MultiheadAttention)):
            raise ConfigError(
                f"{method} int8 quantization on CPU does not support layer type "
                f"'{type(module).__name__}' ({name}); use --method dynamic"
            )
    return names


def _trace(fn, model: nn.Module, method: str):
    try:
        with quiet_ao():
            return fn()
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{method} quantization cannot trace {type(model).__name__} ({first[:200]}); "
            "use --method dynamic"
        ) from None


def prepare_static(
    model: nn.Module,
    example: torch.Tensor,
    backend: str = "x86",
    qat: bool = False,
    observer: str = "moving_average",
) -> nn.Module:
    """FX-prepared ``model`` with observers (``qat``: fake quantization, for training).

    ``example`` is one input (batch of one); FX traces symbolically, so only its type matters.
    """
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    method = "qat" if qat else "static"
    _check_static_layers(model, method)
    model.train(qat)  # QAT folds BatchNorm during training; PTQ fuses it in eval mode
    mapping = _qconfig_mapping(backend, qat, observer)
    prepare = prepare_qat_fx if qat else prepare_fx
    return _trace(lambda: prepare(model, mapping, (example,)), model, method)


def convert_prepared(prepared: nn.Module) -> nn.Module:
    """The int8 model of an observed (calibrated or QAT-trained) FX model, made storable."""
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared.eval()
    with quiet_ao():
        return make_storable(convert_fx(prepared))


def static_step(example: torch.Tensor, backend: str, method: str) -> dict[str, Any]:
    """The variant step of a static/QAT model (what ``restore_quantized`` needs to retrace)."""
    return {
        "kind": "quantize_static",
        "method": method,
        "backend": backend,
        "example_shape": [1, *example.shape[1:]],
        "example_dtype": str(example.dtype).removeprefix("torch."),
    }


def quantize_static_int8(
    model: nn.Module, calibration: Iterable[torch.Tensor], backend: str = "x86"
) -> tuple[nn.Module, dict[str, Any]]:
    """Static int8 of ``model`` (FX graph mode): observe activations on the ``calibration``
    inputs, then convert. Returns the int8 model and its variant step."""
    batches = list(calibration)
    if not batches:
        raise ConfigError("static quantization needs at least one calibration batch")
    example = batches[0][:1]
    prepared = prepare_static(model, example, backend)
    with torch.no_grad(), quiet_ao():
        for x in batches:
            prepared(x)
    return convert_prepared(prepared), static_step(example, backend, "static")


def restore_quantized(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """The quantized structure of a variant step on a freshly built float ``model`` (values are
    placeholders until the variant's weights load)."""
    if step["kind"] == "quantize_dynamic":
        return _apply_dynamic(model, step["modules"])
    example = torch.zeros(step["example_shape"], dtype=getattr(torch, step["example_dtype"]))
    prepared = prepare_static(model, example, step["backend"], qat=step["method"] == "qat")
    return convert_prepared(prepared)


# -- what it saved -----------------------------------------------------------------------


def _is_quantized(module: nn.Module) -> bool:
    """An int8 module (reference modules of FX hold float weights: not int8)."""
    name = type(module).__module__
    return name.startswith(_QUANTIZED_PACKAGES) and ".reference" not in name


def _quantized_weights(module: nn.Module) -> list[torch.Tensor]:
    """The quantized weight tensors a quantized module holds ([] for other modules)."""
    if not _is_quantized(module):
        return []
    if hasattr(module, "_all_weight_values"):  # dynamic LSTM/GRU
        return list(module._weight_bias()["weight"].values())
    weight = getattr(module, "weight", None)
    w = weight() if callable(weight) else weight
    return [w] if isinstance(w, torch.Tensor) and w.is_quantized else []


_FLOAT_LAYERS = (nn.Linear, nn.LSTM, nn.GRU, nn.RNN, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the weight matrices of Linear/Conv/RNN layers by storage: ``float`` (layers
    left in floating point) and ``int8`` (quantized weights, values only)."""
    out = {"float": 0, "int8": 0}
    for module in model.modules():
        if isinstance(module, _FLOAT_LAYERS) and not _is_quantized(module):
            for name, p in module.named_parameters(recurse=False):
                if name.startswith("weight"):
                    out["float"] += p.numel() * p.element_size()
        for w in _quantized_weights(module):
            out["int8"] += w.numel() * w.element_size()
    return out


def quantized_modules(model: nn.Module) -> dict[str, str]:
    """name -> class name of every quantized module in ``model``."""
    return {name: type(m).__name__ for name, m in model.named_modules() if _is_quantized(m)}
