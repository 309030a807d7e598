"""Compute-optimal model size for a budget: the Chinchilla law and its rule of thumb.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", section 3.3 (approach
3): ``L(N, D) = E + A / N**alpha + B / D**beta`` with E = 1.69, A = 406.4, B = 410.7,
alpha = 0.34, beta = 0.28, fitted on their MassiveText runs, and training compute
``C ~ 6 N D``. Minimising L under a fixed C gives ``N_opt = G (C/6)**(beta/(alpha+beta))`` with
``G = (alpha A / (beta B))**(1/(alpha+beta))``. The rule of thumb from the same paper is about
20 training tokens per parameter. The loss values belong to their data and tokenizer; the
sizes and ratios are what transfer to another setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TOKENS_PER_PARAMETER = 20


def chinchilla_loss(n: float, d: float) -> float:
    """Predicted loss (nats per token, on the paper's data) of N parameters trained on D tokens."""
    return E + A / n**ALPHA + B / d**BETA


@dataclass(frozen=True)
class Allocation:
    """How to spend a compute budget: parameters and training tokens."""

    flops: float
    parameters: float
    tokens: float

    @property
    def tokens_per_parameter(self) -> float:
        return self.tokens / self.parameters

    @property
    def loss(self) -> float:
        return chinchilla_loss(self.parameters, self.tokens)


def compute_optimal(flops: float) -> Allocation:
    """The loss-minimising (N, D) for ``flops`` under the fitted law and C = 6 N D."""
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    n = g * (flops / 6) ** (BETA / (ALPHA + BETA))
    return Allocation(flops, n, flops / (6 * n))


def rule_of_thumb(flops: float) -> Allocation:
    """About 20 tokens per parameter: N = sqrt(C / 120), D = 20 N."""
    n = math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))
    return Allocation(flops, n, TOKENS_PER_PARAMETER * n)
