"""ONNX export through torch's dynamo exporter, checked against onnxruntime (docs/export.md).

``export_onnx`` traces with dynamic batch (and sequence) dimensions, writes PATH atomically
only after onnxruntime reproduces torch's outputs on inputs of *another* batch size (and
sequence length) than the traced ones, within ``ATOL + RTOL * |torch output|``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bigtrain.errors import ConfigError

ATOL, RTOL = 1e-4, 1e-3
_PIP = "pip install 'bigtrain[export]'"


def require_onnx() -> None:
    """ConfigError naming the pip line when onnx, onnxscript or onnxruntime is missing."""
    import importlib.util

    missing = [
        m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: {_PIP}")


class FirstOutput(nn.Module):
    """``model``'s first output when it returns a tuple (a language model's (logits, loss))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, tuple) else y


def unsupported_op(error: BaseException) -> str:
    """The operator (or class) named in an exporter error, else its summary line."""
    text = str(error)
    for pattern in (
        r"OpOverload\(op='([^']+)'",
        r"torch\.classes\.(\w+\.\w+)",
        r"\b((?:aten|quantized|prims|torchvision)\.\w+(?:\.\w+)?)",
        r"\b((?:aten|quantized|prims)::\w+)",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    summary = re.search(r"Exception summary\W*\n(.+)", text)
    line = summary.group(1) if summary else (text.strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", line).strip()[:200]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs every optional op registry it skips (torchvision): not our news."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _other_shape(x: torch.Tensor, sequence: bool) -> torch.Tensor:
    """An input of another batch size (and sequence length) than ``x``."""
    b = x.shape[0] + 3
    if x.dtype in (torch.int64, torch.int32):
        high = int(x.max()) + 1
        t = max(1, x.shape[1] // 2) if sequence else x.shape[1]
        return torch.randint(
            0, high, (b, t, *x.shape[2:]), generator=torch.Generator().manual_seed(0)
        )
    return torch.randn((b, *x.shape[1:]), generator=torch.Generator().manual_seed(0))


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str | Path, sequence: bool = False
) -> dict[str, float]:
    """Export ``model`` (called as ``model(x)``) to ONNX at ``path`` and check it.

    Args:
        model: any module; a tuple output keeps its first element.
        example: one input batch (at least 2 rows: dimension 0 is exported dynamic).
        path: the .onnx file, written only when the check passes.
        sequence: dimension 1 is a sequence length, also dynamic (up to the example's).

    Returns:
        ``{"max_abs_diff", "atol", "rtol", "batch", "seq"}`` of the onnxruntime check.
    """
    require_onnx()
    import onnxruntime as ort
    from torch.export import Dim

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name, e.g. {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = FirstOutput(model).eval()
    dims = {0: Dim("batch", min=1, max=65536)}
    if sequence:
        dims[1] = Dim("seq", min=1, max=int(example.shape[1]))
    if example.shape[0] < 2:  # a batch of one would be specialised to 1
        example = example.repeat(2, *([1] * (example.ndim - 1)))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with _quiet(), torch.no_grad():
            try:
                program = torch.onnx.export(
                    wrapped, (example,), dynamo=True, dynamic_shapes={"x": dims},
                    input_names=["x"], output_names=["y"], verbose=False,
                )  # fmt: skip
            except Exception as e:  # the exporter raises many types; all mean "cannot"
                raise ConfigError(
                    f"cannot export {type(model).__name__} to ONNX: the exporter does not "
                    f"support {unsupported_op(e)}"
                ) from None
            program.save(str(tmp), external_data=False)
            x = _other_shape(example, sequence)
            expected = wrapped(x).float().numpy()
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x.numpy()})[0]
        diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        tol = ATOL + RTOL * float(abs(expected).max())
        if not diff <= tol:
            raise ConfigError(
                f"ONNX output disagrees with torch on a batch of {x.shape[0]}"
                + (f" x {x.shape[1]} positions" if sequence else "")
                + f": max abs diff {diff:.3g} > tolerance {tol:.3g}; nothing written"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"max_abs_diff": diff, "atol": ATOL, "rtol": RTOL, "batch": int(x.shape[0]),
            "seq": int(x.shape[1]) if sequence else None}  # fmt: skip
