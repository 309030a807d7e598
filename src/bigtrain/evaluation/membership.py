"""Membership inference by loss threshold (Yeom et al. 2018, "Privacy Risk in Machine Learning").

The attacker guesses "member" (the example was in the training set) when the model's loss on it
is below a threshold. Sweeping the threshold gives an ROC curve: its AUC (0.5 = the attacker
learns nothing) and the membership advantage max(TPR - FPR) over thresholds measure how much the
model leaks about who was in its training data. DP-SGD bounds the advantage by e^eps - 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bigtrain.errors import DataError

from .outputs import collect_outputs, per_example_loss


@dataclass(frozen=True)
class MembershipResult:
    """Outcome of the loss-threshold attack.

    Attributes:
        auc: ROC AUC of the score -loss for "member" (ties count one half); 0.5 is chance.
        advantage: max over thresholds of TPR - FPR (Yeom et al.'s membership advantage).
        n_members: training examples attacked (after balancing).
        n_nonmembers: held-out examples attacked (after balancing).
    """

    auc: float
    advantage: float
    n_members: int
    n_nonmembers: int


def roc_auc_and_advantage(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(ROC AUC, max TPR - FPR) of ``scores`` (higher = more positive) for 0/1 ``labels``.

    Tied scores form one ROC point, so the AUC equals the Mann-Whitney statistic with ties
    counted as one half.
    """
    scores, labels = scores.double().flatten(), labels.double().flatten()
    n_pos, n_neg = float(labels.sum()), float((1 - labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise DataError("an ROC curve needs both positive and negative examples")
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last = torch.ones_like(s, dtype=torch.bool)  # the last index of each run of tied scores
    last[:-1] = s[1:] != s[:-1]
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tp[last] / n_pos])
    fpr = torch.cat([zero, fp[last] / n_neg])
    auc = torch.trapezoid(tpr, fpr)
    return float(auc), float((tpr - fpr).max())


def loss_threshold_attack(
    member_loss: torch.Tensor, nonmember_loss: torch.Tensor, seed: int = 0
) -> MembershipResult:
    """The attack on per-example losses already computed.

    The larger set is subsampled (without replacement, seeded) to the size of the smaller, so
    the AUC and the advantage are those of a balanced member/non-member mix.
    """
    n = min(len(member_loss), len(nonmember_loss))
    if n == 0:
        raise DataError(
            "membership inference needs member and non-member examples "
            f"(got {len(member_loss)} and {len(nonmember_loss)})"
        )
    gen = torch.Generator().manual_seed(seed)

    def take(t: torch.Tensor) -> torch.Tensor:
        return t if len(t) == n else t[torch.randperm(len(t), generator=gen)[:n]]

    m, nm = take(member_loss.flatten()), take(nonmember_loss.flatten())
    scores = -torch.cat([m, nm])
    labels = torch.cat([torch.ones(n), torch.zeros(n)])
    auc, adv = roc_auc_and_advantage(scores, labels)
    return MembershipResult(auc=auc, advantage=adv, n_members=n, n_nonmembers=n)


def membership_inference(
    model: nn.Module,
    task: Any,
    member_batches: Iterable[Any],
    nonmember_batches: Iterable[Any],
    *,
    seed: int = 0,
) -> MembershipResult:
    """Loss-threshold membership attack on ``model``: training examples vs held-out ones.

    Args:
        model: the trained model (evaluated in eval mode, without gradients).
        task: its classification, binary or regression Task (per-example cross-entropy, log
            loss or squared error is computed from the task's logits; label smoothing is not
            applied).
        member_batches: ``(x, y)`` batches of examples the model was trained on.
        nonmember_batches: ``(x, y)`` batches it never saw (validation or test).
        seed: seeds the subsampling that balances the two sets.

    Returns:
        MembershipResult; ``auc`` near 0.5 means the losses do not give membership away.

    Raises:
        ConfigError: the task is not a classification, binary or regression task.
        DataError: either set is empty.
    """
    members = per_example_loss(collect_outputs(model, task, member_batches))
    nonmembers = per_example_loss(collect_outputs(model, task, nonmember_batches))
    return loss_threshold_attack(members, nonmembers, seed=seed)
