"""Differential privacy: DP-SGD through Opacus, Poisson sampling and the privacy accountant.

``bigtrain.build.privacy`` wires these into a run when a recipe has a ``privacy:`` section
(docs/privacy.md). Opacus itself is imported only when a function needs it.
"""

from bigtrain.privacy.accountant import (
    ACCOUNTANT,
    MAX_NOISE_MULTIPLIER,
    PrivacyAccountant,
    RDPHistory,
    calibrate_noise,
    epsilon_after,
    require_opacus,
)
from bigtrain.privacy.config import PrivacyConfig
from bigtrain.privacy.dpsgd import (
    DPTask,
    disable_per_example_gradients,
    make_dp_optimizer,
    make_private_model,
    refusal,
    unsupported_layers,
)
from bigtrain.privacy.sampling import PoissonLoader

__all__ = [
    "ACCOUNTANT",
    "MAX_NOISE_MULTIPLIER",
    "DPTask",
    "disable_per_example_gradients",
    "PoissonLoader",
    "PrivacyAccountant",
    "PrivacyConfig",
    "RDPHistory",
    "calibrate_noise",
    "epsilon_after",
    "make_dp_optimizer",
    "make_private_model",
    "refusal",
    "require_opacus",
    "unsupported_layers",
]
