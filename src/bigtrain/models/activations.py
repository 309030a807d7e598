"""Activation functions by name, and the weight initialisation that suits each one."""

from __future__ import annotations

import difflib

from torch import nn

#: name -> activation module class (instantiated with no arguments by ``make_activation``)
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# Saturating, zero-centred activations: Glorot/Xavier initialisation was derived for these.
_XAVIER = {"sigmoid", "tanh"}


def check_activation(name: str) -> str:
    """Return ``name`` if it is a known activation, else raise ValueError listing the choices."""
    if name not in ACTIVATIONS:
        close = difflib.get_close_matches(str(name), list(ACTIVATIONS), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(
            f"activation: unknown activation '{name}'{hint}; choose one of: "
            + ", ".join(ACTIVATIONS)
        )
    return name


def make_activation(name: str) -> nn.Module:
    """A fresh activation module, e.g. ``make_activation("gelu") -> nn.GELU()``.

    Raises:
        ValueError: ``name`` is not in ``ACTIVATIONS`` (the message lists the choices).
    """
    return ACTIVATIONS[check_activation(name)]()


def init_weights(layer: nn.Module, activation: str | None) -> None:
    """Initialise a Linear/Conv layer for the activation that follows it; biases start at zero.

    Why two schemes: Kaiming (He) init scales the weight variance by 2/fan_in so the signal keeps its
    variance through rectifiers (ReLU and its smooth cousins ELU, GELU, SiLU) that zero or shrink
    about half of their input. Xavier (Glorot) init, variance 2/(fan_in + fan_out), was derived for
    symmetric activations that are near-linear around zero (tanh, sigmoid); Kaiming would saturate
    them. ``activation=None`` means no nonlinearity follows (an output layer): Xavier with gain 1.
    """
    weight = getattr(layer, "weight", None)
    if weight is None:
        return
    if activation is None or activation in _XAVIER:
        gain = nn.init.calculate_gain(activation or "linear")
        nn.init.xavier_uniform_(weight, gain=gain)
    elif activation == "leaky_relu":
        nn.init.kaiming_uniform_(weight, a=0.01, nonlinearity="leaky_relu")  # torch's default slope
    else:
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    bias = getattr(layer, "bias", None)
    if bias is not None:
        nn.init.zeros_(bias)
