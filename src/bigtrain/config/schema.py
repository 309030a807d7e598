"""The recipe schema. Each component's own Config lives beside the component; this file only
assembles them. Unknown keys are errors (extra="forbid"), values are validated once, here."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from bigtrain.callbacks.noise_scale import DynamicBatchConfig
from bigtrain.compress.distill_config import DistillConfig
from bigtrain.compress.prune_config import PruneConfig
from bigtrain.compress.quantize_config import QuantizeConfig
from bigtrain.data.config import DataConfig
from bigtrain.data.ratings_config import RATINGS_DATA_NAMES, RatingsDataConfig
from bigtrain.data.text_config import TEXT_DATA_NAMES, TextDataConfig
from bigtrain.optim.config import (
    BatchSizeScheduleConfig,
    OptimConfig,
    RegularizationConfig,
    ScheduleConfig,
)
from bigtrain.privacy.config import PrivacyConfig
from bigtrain.transfer.config import FinetuneConfig
from bigtrain.transfer.lora_config import LoraConfig


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The ``model:`` section, validated: a registered model's name and its typed Config.

    ``config`` is the model's own Config dataclass (``MLPConfig``, ``GPTConfig``...), checked
    once here; builders pass it on as it is. In YAML the section is ``{name: ..., <fields>}``.
    """

    name: str
    config: Any

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with some Config fields changed (values the builder learns from the data)."""
        return ModelSpec(self.name, dataclasses.replace(self.config, **changes))

    def fields(self) -> dict[str, Any]:
        """The Config as plain values (nested dataclasses become dicts)."""
        return dataclasses.asdict(self.config)


def _parse_model(value: Any) -> ModelSpec:
    """Dispatch on ``name`` to the model's Config (one-line ConfigError when anything is off)."""
    from bigtrain.errors import ConfigError
    from bigtrain.models import MODELS, validate_model_config

    if isinstance(value, ModelSpec):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"model: expected a mapping with a name, got {value!r}")
    if "name" not in value:
        raise ConfigError(f"model.name is required (one of: {', '.join(MODELS.names())})")
    params = dict(value)
    name = params.pop("name")
    MODELS.get(str(name))  # unknown names: "did you mean"
    return ModelSpec(str(name), validate_model_config(str(name), params))


def _dump_model(spec: ModelSpec) -> dict[str, Any]:
    return {"name": spec.name, **spec.fields()}


ModelSection = Annotated[ModelSpec, BeforeValidator(_parse_model), PlainSerializer(_dump_model)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    """What is learned. ``auto`` picks classification/binary/regression from the data."""

    name: Literal[
        "auto", "classification", "binary", "regression", "language_model", "rating", "ranking"
    ] = "auto"
    loss: Literal[
        "auto", "cross_entropy", "bce", "mse", "mae", "huber", "bpr", "sampled_softmax"
    ] = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    metrics: list[str] | None = None  # None: the task's defaults


class HealthConfig(_Strict):
    """Training health checks: non-finite loss stops the run; gradient norms are inspected."""

    check_every: int = Field(50, ge=0)  # per-layer gradient norms every N steps (0: never)
    vanishing_below: float = 1e-7
    exploding_above: float = 1e3


class TrainerConfig(_Strict):
    max_epochs: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_grad_value: float | None = Field(None, gt=0)
    eval_every: int | None = Field(None, ge=1)  # steps; None = every epoch
    log_every: int = Field(10, ge=1)
    monitor: str | None = None  # e.g. "val/accuracy"; None = the task's default
    monitor_mode: Literal["min", "max"] | None = None
    early_stopping_patience: int | None = Field(None, ge=1)  # in evaluations
    checkpoint_every: int | None = Field(
        None, ge=1
    )  # steps; None = after evaluations, rate-limited
    checkpoint_interval_s: float = Field(30.0, ge=0)  # min seconds between evaluation checkpoints
    keep_checkpoints: int = Field(2, ge=1)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"  # auto: bf16 where native
    compile: bool | Literal["auto"] = False  # auto: only runs long enough to repay compiling
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = True
    health: HealthConfig = HealthConfig()

    @model_validator(mode="after")
    def _needs_a_length(self) -> TrainerConfig:
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set trainer.max_epochs or trainer.max_steps")
        return self


class DistributedConfig(_Strict):
    """How the processes torchrun starts share the work (docs/distributed.md).

    ``auto`` is ``ddp`` when torchrun started more than one process, ``single`` otherwise.
    ``data.batch_size`` is the global batch, split evenly across processes.
    """

    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    timeout_s: float = Field(600.0, gt=0)  # a collective waiting longer is an error, not a hang
    find_unused_parameters: bool = False  # ddp: parameters a step may not use (sparse experts)
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward (less memory)
    cpu_offload: bool = False  # fsdp on GPU: keep sharded weights and optimizer state in RAM


class RunConfig(_Strict):
    """A whole recipe, resolved: what `bigtrain train` runs and writes to config.yaml."""

    name: str = "run"
    description: str = ""
    seed: int = 0
    data: DataConfig | TextDataConfig | RatingsDataConfig
    model: ModelSection  # {"name": <registered model>, ...its Config fields}
    task: TaskConfig = TaskConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size_schedule: BatchSizeScheduleConfig | None = None
    dynamic_batch: DynamicBatchConfig | None = None  # batch grown from the gradient noise scale
    regularization: RegularizationConfig = RegularizationConfig()
    privacy: PrivacyConfig | None = None  # DP-SGD through Opacus (docs/privacy.md)
    finetune: FinetuneConfig | None = None  # freezing, unfreezing, per-group LRs (docs/transfer.md)
    lora: LoraConfig | None = None  # low-rank adapters through peft (docs/transfer.md)
    distill: DistillConfig | None = (
        None  # learn from a teacher's soft targets (docs/compression.md)
    )
    prune: PruneConfig | None = None  # magnitude pruning during training (docs/compression.md)
    quantize: QuantizeConfig | None = None  # quantization-aware training (docs/compression.md)
    trainer: TrainerConfig
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="before")
    @classmethod
    def _pick_data_schema(cls, values: Any) -> Any:
        # choose the data schema by name so errors talk about the right keys
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            data = values["data"]
            name = data.get("name")
            schema = (
                TextDataConfig if name in TEXT_DATA_NAMES
                else RatingsDataConfig if name in RATINGS_DATA_NAMES
                else DataConfig
            )  # fmt: skip
            try:
                values = {**values, "data": schema.model_validate(data)}
            except ValidationError as e:
                from bigtrain.config.loader import format_validation_error

                raise format_validation_error(e, "", root=schema, prefix=("data",)) from None
        return values
