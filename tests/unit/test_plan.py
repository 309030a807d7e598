"""The planner against ground truth: real parameter counts, torch's FLOP counter, the optimizer
states torch allocates, measured peak memory, published figures and the Chinchilla formula."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bigtrain.build.describe import describe_run
from bigtrain.cli.main import main
from bigtrain.config import load_recipe
from bigtrain.config.loader import recipe_names
from bigtrain.data.config import DataConfig
from bigtrain.data.describe import describe_table
from bigtrain.data.split import load_data
from bigtrain.errors import DataError
from bigtrain.models import build_model
from bigtrain.models.gpt import GPT, GPTConfig
from bigtrain.plan import chinchilla
from bigtrain.plan.counting import parameter_counts, trace_step
from bigtrain.plan.hardware import get_hardware
from bigtrain.plan.memory import OPTIMIZER_STATES, optimizer_state_bytes, plan_memory
from bigtrain.plan.planner import Settings, make_plan, non_embedding_parameters

TABULAR = [
    r for r in recipe_names()
    if not r.startswith(("shakespeare", "fashion", "movielens"))
    and isinstance(load_recipe(r).data, DataConfig)  # not text or ratings data
]  # fmt: skip
# one recipe per model family and feature in the default suite, every recipe under -m slow
CORE = {"digits-mlp", "digits-cnn", "linear-regression-gd", "shakespeare-char", "shakespeare-moe",
        "shakespeare-shared", "shakespeare-lstm", "shakespeare-genre"}  # fmt: skip
ALL_RECIPES = [
    r if r in CORE else pytest.param(r, marks=pytest.mark.slow)
    for r in recipe_names(include_tiny=False)
]


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_parameter_counts_equal_the_built_model(recipe):
    cfg = load_recipe(recipe)
    if cfg.data.name in ("shakespeare", "shakespeare_genre", "fashion_mnist"):
        cfg = load_recipe(f"tiny/{recipe}")  # the same model on a slice of the data
    planned = describe_run(cfg)
    from bigtrain.build import build

    try:
        real = build(cfg, run_dir=None, quiet=True).model
    except DataError as e:  # an optional data set that is not installed (Fashion-MNIST)
        pytest.skip(str(e))
    assert sum(parameter_counts(planned.model).values()) == sum(
        p.numel() for p in real.parameters()
    )


@pytest.mark.parametrize("recipe", TABULAR)
def test_data_description_matches_loading(recipe):
    cfg = load_recipe(recipe)
    try:
        loaded = load_data(cfg.data, task=cfg.task.name)
    except DataError as e:  # an optional data set that is not installed
        pytest.skip(str(e))
    described = describe_table(cfg.data, cfg.task.name)
    assert not described.read_from_data
    assert described.input_shape == tuple(loaded.input_shape)
    assert described.train_examples == len(loaded.train)
    assert described.val_examples == (len(loaded.val) if loaded.val is not None else 0)
    outputs = 2 if cfg.task.name == "classification" and loaded.kind == "binary" else None
    assert described.num_outputs == (outputs or loaded.num_outputs)


def test_shared_and_tied_parameters_are_counted_once():
    cfg = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=16, n_unique_blocks=2)
    model = GPT.from_config(cfg, (16,), 50)
    assert sum(parameter_counts(model).values()) == sum(p.numel() for p in model.parameters())
    assert non_embedding_parameters(model) == model.num_parameters(exclude_embeddings=True)


def test_gpt2_small_has_its_published_parameter_count():
    # GPT-2 124M (Radford et al. 2019; Hugging Face gpt2: 124,439,808 with the tied head)
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=True)
    with torch.device("meta"):
        model = GPT.from_config(cfg, (1024,), 50257)
    assert sum(parameter_counts(model).values()) == 124_439_808
    assert parameter_counts(model)["Embedding"] == 50257 * 768 + 1024 * 768


@pytest.mark.parametrize("size", [(2, 64, 64), (4, 128, 128), (6, 192, 256)])
def test_gpt_flops_are_within_5_percent_of_the_formula(size):
    layers, width, block = size
    cfg = load_recipe(
        "shakespeare-char",
        [f"model.n_layer={layers}", f"model.n_embd={width}", f"model.block_size={block}"],
    )
    planned = describe_run(cfg)
    trace = trace_step(planned.model, planned.example_batch(2), planned.loss, 2, planned.blocks())
    per_token = trace.flops / (2 * block)
    assert per_token == pytest.approx(planned.model.flops_per_token(), rel=0.05)


def test_meta_trace_counts_what_torch_counts_on_a_real_model():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10))  # fmt: skip
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def loss(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    counter = FlopCounterMode(display=False)
    with counter:
        loss(model, (x, y)).backward()
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(8 * 8 * 8, 10))  # fmt: skip
    trace = trace_step(meta, (x.to("meta"), y.to("meta")), loss, 16)
    assert trace.flops == counter.get_total_flops()


def _one_step_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("sgd", {}),
        ("sgd", {"momentum": 0.9}),
        ("adagrad", {}),
        ("rmsprop", {}),
        ("rmsprop", {"momentum": 0.9}),
        ("adam", {}),
        ("adamw", {}),
        ("lamb", {}),
        ("lion", {}),
        ("adafactor", {}),
    ],  # fmt: skip
)
def test_optimizer_state_bytes_equal_what_torch_allocates(name, kwargs):
    from bigtrain.optim.config import OptimConfig
    from bigtrain.optim.optimizers import build_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.LayerNorm(5)
    )
    opt = build_optimizer(model, OptimConfig(name=name, lr=1e-3, **kwargs))
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    shapes = [p.shape for p in model.parameters()]
    assert name in OPTIMIZER_STATES
    assert optimizer_state_bytes(name, shapes, kwargs.get("momentum")) == _one_step_state_bytes(opt)


@pytest.mark.parametrize(
    "recipe,overrides",
    [("digits-cnn", []), ("shakespeare-char", ["data.max_chars=20000", "model.n_layer=2"])],
)
def test_predicted_peak_memory_is_within_15_percent_of_measured(recipe, overrides):
    from bigtrain.build.common import resolve_precision
    from bigtrain.build.describe import measure_training_peak

    cfg = load_recipe(recipe, overrides)
    # precision: auto is bf16 on a CPU with native bf16 (AMX/AVX512-BF16), as the run will be
    precision = resolve_precision(cfg.trainer.precision, "cpu")
    hardware = get_hardware("cpu", precision)
    settings = Settings(hardware, precision=precision, optimizer=cfg.optim.name)
    plan = make_plan(describe_run(cfg), settings)
    assert plan.memory.total == pytest.approx(measure_training_peak(cfg), rel=0.15)


def test_mixed_precision_adam_is_16_bytes_per_parameter_and_zero3_divides_it():
    # ZeRO (Rajbhandari et al. 2020, section 3.1): 7.5B parameters, mixed-precision Adam:
    # 16 bytes per parameter = 120 GB; fully sharded over 64 devices: 1.88 GB each
    n = 7_500_000_000
    adam = optimizer_state_bytes("adam", [(n,)])
    single = plan_memory(parameters=n, trainable=n, optimizer_bytes=adam, activation_bytes=0,
                         precision="bf16")  # fmt: skip
    assert single.model_states == pytest.approx(16 * n, rel=1e-9)
    assert single.model_states / 1e9 == pytest.approx(120, rel=1e-3)
    sharded = plan_memory(parameters=n, trainable=n, optimizer_bytes=adam, activation_bytes=0,
                          precision="bf16", strategy="fsdp", devices=64)  # fmt: skip
    assert sharded.model_states / 1e9 == pytest.approx(1.875, rel=1e-3)


def test_chinchilla_allocation_minimises_the_law_at_fixed_compute():
    flops = 5.76e23  # Chinchilla's own budget
    best = chinchilla.compute_optimal(flops)
    assert 6 * best.parameters * best.tokens == pytest.approx(flops)
    for factor in (0.8, 1.25):
        n = best.parameters * factor
        assert chinchilla.chinchilla_loss(n, flops / (6 * n)) > best.loss
    thumb = chinchilla.rule_of_thumb(flops)
    assert thumb.tokens == pytest.approx(20 * thumb.parameters)
    assert 6 * thumb.parameters * thumb.tokens == pytest.approx(flops)


def _plan_json(capsys, *argv) -> dict:
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_reports_a_digits_mlp_with_exact_parameters(capsys):
    out = _plan_json(capsys, "digits-mlp")
    cfg = load_recipe("digits-mlp")
    real = build_model(cfg.model.name, cfg.model.config, (64,), 10)
    assert out["parameters"]["total"] == sum(p.numel() for p in real.parameters())
    memory = out["memory_bytes"]
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert out["step_seconds"] > 0 and out["fits"]


def test_fsdp_shards_and_checkpointing_cuts_activations(capsys):
    gpt = ["model.n_layer=4", "--hardware", "h100-80gb", "--gpus", "8"]
    ddp = _plan_json(capsys, "shakespeare-char", *gpt, "--strategy", "ddp", "data.batch_size=16")
    fsdp = _plan_json(capsys, "shakespeare-char", *gpt, "--strategy", "fsdp", "data.batch_size=16")
    assert fsdp["memory_bytes"]["optimizer"] == pytest.approx(
        ddp["memory_bytes"]["optimizer"] / 8, abs=8
    )
    by = fsdp["memory_by_strategy"]["fsdp"]
    assert by["checkpointed"]["activations"] < by["plain"]["activations"]
    assert fsdp["precision"] == "bf16"  # the recipe's "auto" on a GPU of the table


def test_budget_gives_the_compute_optimal_size(capsys):
    out = _plan_json(capsys, "shakespeare-char", "--budget-flops", "1e18")
    assert out["budget"]["compute_optimal"]["parameters"] == pytest.approx(
        chinchilla.compute_optimal(1e18).parameters
    )


def test_a_users_hardware_file_extends_the_table(capsys, tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "toy-gpu:\n  peak_tflops: {fp32: 10, bf16: 20}\n  memory_gb: 0.01\n"
    )
    out = _plan_json(capsys, "shakespeare-char", "--hardware", str(tmp_path / "mine.yaml"))
    assert out["hardware"] == "toy-gpu" and out["device_memory_bytes"] == 10_000_000
    assert not out["fits"]  # 10 MB cannot hold this GPT's training state


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["digits-mlp", "--hardware", "h100"], "known: cpu, a100-80gb, h100-80gb, h200"),
        (["shakespeare-char", "--budget-flops", "1000"], "less than one step"),
        (["digits-mlp", "--hardware", "h200", "--calibrate"], "--calibrate measures this machine"),
        (["digits-mlp", "--gpus", "2", "--strategy", "single"], "use --strategy ddp or fsdp"),
        (["digits-mlp", "--strategy", "fsdp", "--gpus", "2"], "has no blocks"),
        (["digits-mlp", "data.batch_size=63", "--gpus", "2"], "not a multiple of the 2 devices"),
        (["digits-mlp", "modle.hidden=[8]"], "did you mean 'model'"),
        (["digits-mlp", "optim.name=adamm"], "did you mean 'adam'"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, expected):
    assert main(["plan", *argv]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_transformer_layer_activations_match_korthikanti_et_al():
    # Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
    # eq. 1: a layer saves s*b*h*(34 + 5*a*s/h) bytes in 16-bit. A fused (flash) attention
    # kernel keeps no (s, s) matrices (the 5as/h term) and without dropout there are no masks
    # (2 of the 34): 32 bytes per s*b*h, plus what their count rounds away: the kernel's fp32
    # log-sum-exp per head and row (4*a*s*b) and each LayerNorm's fp32 mean and rstd (16*s*b)
    cfg = load_recipe(
        "shakespeare-char",
        ["model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=256",
         "model.bias=true", "model.position=learned", "model.dropout=0.0"],
    )  # fmt: skip
    planned = describe_run(cfg)
    out = make_plan(
        planned, Settings(get_hardware("h100-80gb"), precision="bf16", optimizer="adamw")
    )
    s, b, h, a = 256, out.micro_batch, 128, 4
    per_layer = [c.saved_bytes / (s * b * h) for c in out.trace.blocks]
    assert per_layer == [pytest.approx(32 + (4 * a + 16) / h, abs=1e-3)] * 2  # + RNG scalars


def test_calibrate_measures_the_recipes_own_steps(capsys):
    from bigtrain.build.describe import calibrate

    cfg = load_recipe("tiny/digits-mlp")
    measured = calibrate(cfg, seconds=0.2, warmup=2, min_steps=5)
    assert measured.steps_timed >= 5 and measured.step_seconds > 0 and measured.eval_seconds > 0
    out = _plan_json(capsys, "tiny/digits-mlp", "--calibrate")
    assert out["mfu_source"].startswith("measured") and 0 < out["mfu"] < 1
