"""Recommender tasks: explicit ratings (MSE) and implicit feedback with sampled negatives
(BPR or sampled softmax), both evaluated on held-out ratings and by ranking every item.

Training batches are ``(x, y)``: x (B, 2) = (user row, item row), y the ratings. Evaluation
batches are the dicts of ``bigtrain.data.ratings.eval_batches``: their held-out pairs give
RMSE/MAE, and every item row is scored for their users (items rated in earlier splits masked)
to compute Recall@K, NDCG@K and the hit rate with torchmetrics' retrieval metrics. The same
metrics of two baselines come with every full evaluation: the global mean and Koren's shrunk
user + item biases for ratings, the most popular items for ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import ConfigError, DataError, did_you_mean

_LOW = torch.finfo(torch.float32).min  # the score of a masked item: ranked last


@runtime_checkable
class ScoresAllItems(Protocol):
    """A recommender that scores every item row for a batch of users: (U,) -> (U, n_items + 1)."""

    def score_all(self, users: torch.Tensor) -> torch.Tensor: ...


@dataclass
class RecommenderPriors:
    """What the data says before any model: the rating baselines and item popularity."""

    global_mean: float
    user_bias: torch.Tensor  # (U + 1,)
    item_bias: torch.Tensor  # (I + 1,)
    popularity: torch.Tensor  # (I + 1,)
    warm_items: torch.Tensor  # item rows with training ratings (where negatives are drawn)


def _ranking_inputs(scores: torch.Tensor, batch: dict, k: int) -> tuple[torch.Tensor, ...]:
    """(preds, target, indexes) for retrieval metrics: each user's top ``k`` items plus all its
    relevant ones, which gives the same Recall@k/NDCG@k/hit rate as scoring every item."""
    scores = scores.clone()
    scores[:, 0] = _LOW  # the padding row is not an item
    scores[batch["mask_row"], batch["mask_item"]] = _LOW
    n_items = scores.shape[1]
    top = scores.topk(min(k, n_items), dim=1).indices  # (U, k)
    rows = torch.arange(len(scores), device=scores.device)
    has_relevant = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    has_relevant[batch["rel_row"]] = True
    cand_row = torch.cat([rows.repeat_interleave(top.shape[1]), batch["rel_row"]])
    cand_item = torch.cat([top.flatten(), batch["rel_item"]])
    keep = has_relevant[cand_row]
    key = torch.unique(cand_row[keep] * n_items + cand_item[keep])
    cand_row, cand_item = key // n_items, key % n_items
    target = torch.isin(key, batch["rel_row"] * n_items + batch["rel_item"])
    return scores[cand_row, cand_item], target, batch["users"][cand_row]


class _RecommenderTask(Task):
    """Evaluation shared by both recommender tasks."""

    rating_metrics = False  # does the model predict ratings (RMSE/MAE mean something)?

    def __init__(
        self,
        priors: RecommenderPriors,
        top_k: int = 10,
        penalized: bool = False,
        metrics: list[str] | None = None,
    ) -> None:
        self.priors, self.k, self.penalized = priors, top_k, penalized
        self.metric_names = metrics
        self.metrics()  # validate names now

    # ------------------------------------------------------------------ metrics
    def _available(self) -> dict[str, tuple[Any, str]]:
        """metric name -> (factory, which outputs it reads)."""
        import torchmetrics  # here, not at module level: it takes ~4 s to import
        import torchmetrics.retrieval as retrieval

        k = self.k
        made: dict[str, tuple[Any, str]] = {}
        if self.rating_metrics:
            rmse = lambda: torchmetrics.MeanSquaredError(squared=False)  # noqa: E731
            made["rmse"] = (rmse, "rating")
            made["mae"] = (torchmetrics.MeanAbsoluteError, "rating")
            made["rmse_global_mean"] = (rmse, "global_mean")
            made["rmse_user_item_bias"] = (rmse, "user_item_bias")
        for source, suffix in (("rank", ""), ("popular", "_most_popular")):
            for name, cls in (("ndcg", retrieval.RetrievalNormalizedDCG),
                              ("recall", retrieval.RetrievalRecall),
                              ("hit_rate", retrieval.RetrievalHitRate)):  # fmt: skip
                factory = lambda cls=cls: cls(top_k=k, empty_target_action="skip")  # noqa: E731
                made[f"{name}@{k}{suffix}"] = (factory, source)
        return made

    def metrics(self, light: bool = False):
        import torchmetrics

        available = self._available()
        names = self.metric_names
        if names is None:
            baseline = ("global_mean", "user_item_bias", "popular")
            names = [n for n, (_, src) in available.items() if not (light and src in baseline)]
        for name in names:
            if name not in available:
                raise ConfigError(
                    f"task.metrics: '{name}' is not a recommender metric"
                    f"{did_you_mean(name, available)}; choose from {', '.join(available)}"
                )
        self._sources = {n: available[n][1] for n in available}
        # no compute groups: metrics of the same class are fed different inputs
        made = {n: available[n][0]() for n in names}
        return torchmetrics.MetricCollection(made, compute_groups=False)

    def update_metrics(self, metrics: Any, out: StepOutput) -> None:
        if not isinstance(out.preds, dict):
            return
        for name, metric in metrics.items(keep_base=True):
            got = out.preds[self._sources[name]]
            if len(got) == 3:
                preds, target, indexes = got
                metric.update(preds, target, indexes=indexes)
            else:
                metric.update(*got)

    # ------------------------------------------------------------------ evaluation
    def _held_out_loss(self, model: nn.Module, batch: dict, pairs: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def _evaluate(self, model: nn.Module, batch: dict) -> StepOutput:
        users = batch["users"]
        pairs = torch.stack([users[batch["pair_row"]], batch["pair_item"]], dim=1)
        out = self._held_out_loss(model, batch, pairs)
        if not isinstance(model, ScoresAllItems):
            raise ConfigError(f"model {type(model).__name__} cannot score every item (score_all)")
        p = self.priors
        outputs: dict[str, Any] = {
            "rank": _ranking_inputs(model.score_all(users).float(), batch, self.k),
            "popular": _ranking_inputs(
                p.popularity.to(users.device)[None].expand(len(users), -1), batch, self.k
            ),
        }
        if self.rating_metrics:
            rating, u, i = batch["rating"], pairs[:, 0], pairs[:, 1]
            bias = p.global_mean + p.user_bias.to(u.device)[u] + p.item_bias.to(u.device)[i]
            outputs["rating"] = (out.preds, rating)
            outputs["global_mean"] = (torch.full_like(rating, p.global_mean), rating)
            outputs["user_item_bias"] = (bias, rating)
        out.preds = outputs
        return out

    def check_batch(self, model: nn.Module, batch) -> None:
        x, y = batch
        with torch.no_grad():
            out = model(x[:2])
        if out.shape != (min(2, len(x)),):
            raise DataError(f"model outputs shape {tuple(out.shape)}, expected one score a pair")

    def _scores(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.penalized and model.training:
            return model(x, with_penalty=True)
        return model(x), torch.zeros((), device=x.device)


class RatingTask(_RecommenderTask):
    """Explicit ratings: mean squared error of the predicted rating (plus the row penalty)."""

    monitor = "rmse"
    monitor_mode = "min"
    rating_metrics = True

    def loss(self, model: nn.Module, batch) -> StepOutput:
        if isinstance(batch, dict):
            return self._evaluate(model, batch)
        x, y = batch
        pred, penalty = self._scores(model, x)
        return StepOutput(F.mse_loss(pred, y) + penalty, len(y), pred.detach(), y)

    def _held_out_loss(self, model: nn.Module, batch: dict, pairs: torch.Tensor) -> StepOutput:
        pred = model(pairs)
        return StepOutput(F.mse_loss(pred, batch["rating"]), len(pairs), pred.detach())


class RankingTask(_RecommenderTask):
    """Implicit feedback: each training rating >= ``data.relevant_rating`` is a positive, scored
    against ``negatives`` items drawn uniformly from the items with training ratings.

    ``bpr``: -log sigmoid(s_pos - s_neg) averaged over negatives (Rendle et al., 2009);
    ``sampled_softmax``: cross-entropy of the positive among itself and the negatives. A drawn
    negative may be an item the user rated (uniform sampling, as in the BPR paper).
    """

    monitor = "ndcg@10"
    monitor_mode = "max"

    def __init__(
        self,
        priors: RecommenderPriors,
        top_k: int = 10,
        penalized: bool = False,
        metrics: list[str] | None = None,
        loss: str = "bpr",
        negatives: int = 4,
    ) -> None:
        if loss not in ("bpr", "sampled_softmax"):
            raise ConfigError(
                f"task.loss '{loss}' is not a ranking loss; use bpr or sampled_softmax"
            )
        super().__init__(priors, top_k, penalized, metrics)
        self.loss_name, self.negatives = loss, negatives
        self.monitor = f"ndcg@{top_k}"

    def _ranking_loss(
        self, model: nn.Module, positives: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        warm = self.priors.warm_items.to(positives.device)
        draw = torch.randint(len(warm), (len(positives), self.negatives), generator=generator)
        negatives = warm[draw.to(positives.device)]  # (B, n)
        users = positives[:, :1].expand(-1, self.negatives)
        pairs = torch.cat([positives, torch.stack([users, negatives], -1).reshape(-1, 2)])
        scores, penalty = self._scores(model, pairs)  # one forward for positives and negatives
        pos, neg = scores[: len(positives)], scores[len(positives) :].view(len(positives), -1)
        if self.loss_name == "bpr":
            return -F.logsigmoid(pos[:, None] - neg).mean() + penalty
        logits = torch.cat([pos[:, None], neg], dim=1)
        zeros = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
        return F.cross_entropy(logits, zeros) + penalty

    def loss(self, model: nn.Module, batch) -> StepOutput:
        if isinstance(batch, dict):
            return self._evaluate(model, batch)
        x, _ = batch
        return StepOutput(self._ranking_loss(model, x, None), len(x))

    def _held_out_loss(self, model: nn.Module, batch: dict, pairs: torch.Tensor) -> StepOutput:
        users = batch["users"]
        relevant = torch.stack([users[batch["rel_row"]], batch["rel_item"]], dim=1)
        if not len(relevant):
            return StepOutput(torch.zeros((), device=users.device), 0)
        # the same negatives at every evaluation: the loss curve shows the model, not the draw
        gen = torch.Generator().manual_seed(int(users[0]))
        return StepOutput(self._ranking_loss(model, relevant, gen), len(relevant))
