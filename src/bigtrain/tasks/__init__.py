"""Tasks: what a batch means (classification, regression, language modelling)."""

from bigtrain._registry import Registry
from bigtrain.tasks.language_model import LanguageModelTask
from bigtrain.tasks.recommendation import RankingTask, RatingTask, RecommenderPriors
from bigtrain.tasks.supervised import (
    BinaryClassificationTask,
    ClassificationTask,
    RegressionTask,
)

TASKS: Registry = Registry("task")
TASKS.add("classification", ClassificationTask)
TASKS.add("binary", BinaryClassificationTask)
TASKS.add("regression", RegressionTask)
TASKS.add("language_model", LanguageModelTask)
TASKS.add("rating", RatingTask)
TASKS.add("ranking", RankingTask)

__all__ = [
    "TASKS",
    "LanguageModelTask",
    "BinaryClassificationTask",
    "ClassificationTask",
    "RankingTask",
    "RatingTask",
    "RecommenderPriors",
    "RegressionTask",
]
