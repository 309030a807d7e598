"""Hyperparameter search: grid sweeps, Optuna studies, LR and batch-size finders.

Optuna is optional (``pip install 'bigtrain[tune]'``) and imported only when a study runs, so
importing this package needs only bigtrain's own dependencies.
"""

from bigtrain.tune.batch_size import BatchSizeResult, find_batch_size, parse_memory
from bigtrain.tune.lr_find import LRFindResult, lr_find, lr_range_test
from bigtrain.tune.search import TuneResult, tune
from bigtrain.tune.space import Param, load_space

__all__ = [
    "BatchSizeResult",
    "LRFindResult",
    "Param",
    "TuneResult",
    "find_batch_size",
    "load_space",
    "lr_find",
    "lr_range_test",
    "parse_memory",
    "tune",
]
