"""Knowledge distillation: the loss against the formula, the teacher's use in the loop, the
build wrapper's checks (teacher outside optimizer and checkpoint, mismatches refused)."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from bigtrain.build import build
from bigtrain.build.distill import Teacher, check_compatible, load_teacher_run
from bigtrain.compress.distill import (
    DistillState,
    DistillTask,
    HiddenStateMatch,
    distillation_loss,
    module_width,
    soft_target_loss,
)
from bigtrain.config import load_recipe
from bigtrain.core.loop import Trainer
from bigtrain.data import InMemoryLoader
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.run import build_run
from bigtrain.tasks import ClassificationTask

QUIET = ["trainer.tensorboard=false", "trainer.progress=false"]


def hand_kl(s, t, T):
    """sum_c p_t (log p_t - log p_s), averaged over rows: the definition, no kl_div."""
    p_t = torch.softmax(t / T, -1)
    return (p_t * (torch.log(p_t) - torch.log_softmax(s / T, -1))).sum(-1).mean()


def test_classifier_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    T, alpha = 3.0, 0.7
    want = alpha * T**2 * hand_kl(s, t, T) + (1 - alpha) * F.cross_entropy(s, y)
    got = distillation_loss(s, t, y, T, alpha, F.cross_entropy)
    assert got == pytest.approx(float(want), rel=1e-5)
    # torch's own KL divergence agrees with the hand computation
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    assert float(soft_target_loss(s, t, T)) == pytest.approx(float(T**2 * kl), rel=1e-5)


def test_language_model_loss_is_per_token_and_skips_ignored_targets():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 6, 11, generator=g), torch.randn(2, 6, 11, generator=g)
    y = torch.randint(0, 11, (2, 6), generator=g)
    y[1, 4:] = -1  # padding
    keep = y != -1
    T, alpha = 2.0, 0.5
    hard = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=-1)
    want = alpha * T**2 * hand_kl(s[keep], t[keep], T) + (1 - alpha) * hard
    assert distillation_loss(s, t, y, T, alpha, hard) == pytest.approx(float(want), rel=1e-5)


def test_temperature_squared_scaling():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(16, 7, generator=g), torch.randn(16, 7, generator=g)
    for T in (1.0, 2.0, 5.0):
        assert float(soft_target_loss(s, t, T)) == pytest.approx(
            T**2 * float(hand_kl(s, t, T)), rel=1e-5
        )
    # the T^2 factor keeps the soft gradients' size roughly constant at high T (Hinton et al.):
    # d/ds [T^2 KL] -> (s - t)/C for large T once logits are centred
    s0, t0 = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    grads = []
    for T in (20.0, 40.0):
        x = s0.clone().requires_grad_(True)
        soft_target_loss(x, t0, T).backward()
        grads.append(x.grad.norm())
    assert float(grads[0] / grads[1]) == pytest.approx(1.0, abs=0.01)


def test_alpha_zero_is_the_hard_loss_exactly_and_one_is_soft_only():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    hard = F.cross_entropy(s, y)
    assert torch.equal(distillation_loss(s, t, y, 4.0, 0.0, hard), hard)
    assert torch.equal(distillation_loss(s, t, y, 4.0, 1.0, hard), soft_target_loss(s, t, 4.0))
    assert distillation_loss(s, s, y, 4.0, 1.0, hard) == pytest.approx(0.0, abs=1e-6)


def test_bad_temperature_and_alpha_are_config_errors():
    s = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="temperature"):
        distillation_loss(s, s, None, 0.0, 0.5, lambda a, b: a.sum())
    with pytest.raises(ConfigError, match="alpha"):
        distillation_loss(s, s, None, 1.0, 1.5, lambda a, b: a.sum())


class CountingTeacher(nn.Module):
    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.net.load_state_dict(student.state_dict())
        self.calls, self.modes = 0, []

    def forward(self, x):
        self.calls += 1
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.net(x)


def tiny_trainer(grad_accum: int, max_steps: int, alpha: float = 0.5):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    student = nn.Linear(4, 3)
    teacher = CountingTeacher(student).train()  # DistillTask must switch it to eval
    task = DistillTask(ClassificationTask(3, metrics=["accuracy"]), teacher, 2.0, alpha)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loader = InMemoryLoader(x, y, 16, shuffle=True, seed=0)
    val = [(x[:32], y[:32])]
    trainer = Trainer(
        student, task, opt, loader, val_data=val, max_steps=max_steps, grad_accum=grad_accum,
        eval_every=2,
    )  # fmt: skip
    return trainer, teacher, student, opt, val


def test_teacher_runs_once_per_micro_batch_in_eval_mode_without_grad():
    trainer, teacher, student, opt, _ = tiny_trainer(grad_accum=2, max_steps=3)
    trainer.fit()
    assert teacher.calls == 3 * 2  # 3 steps x 2 micro-batches; evaluations never call it
    assert teacher.modes == [(False, False)] * 6
    assert all(not p.requires_grad for p in teacher.parameters())
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_opt == {id(p) for p in student.parameters()}
    assert not in_opt & {id(p) for p in teacher.parameters()}
    assert trainer.state.output.extras.keys() >= {"soft_loss", "hard_loss"}


def test_evaluation_is_the_students_own_loss_and_metrics():
    trainer, teacher, student, _, val = tiny_trainer(grad_accum=1, max_steps=1)
    metrics = trainer.evaluate(val)
    x, y = val[0]
    with torch.no_grad():
        want = F.cross_entropy(student(x), y)
    assert metrics["val/loss"] == pytest.approx(float(want), rel=1e-6)
    assert "val/accuracy" in metrics and "val/soft_loss" not in metrics
    assert teacher.calls == 0


def test_training_loss_is_the_mixed_loss():
    trainer, teacher, student, _, _ = tiny_trainer(grad_accum=1, max_steps=1, alpha=0.3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        teacher.net.weight.add_(0.5)  # the teacher now disagrees with the student
        want = distillation_loss(student(x), teacher.net(x), y, 2.0, 0.3, F.cross_entropy)
    out = trainer.state.task.loss(student.train(), (x, y))
    assert float(out.loss.detach()) == pytest.approx(float(want), rel=1e-6)


def test_hidden_state_matching_projects_widths_and_saves_the_projection():
    assert module_width(nn.Sequential(nn.Linear(3, 8), nn.ReLU())) == 8
    match = HiddenStateMatch(8, 5)
    s, t = torch.randn(4, 8), torch.randn(4, 5)
    want = F.mse_loss(s @ match.projection.weight.T, t)
    assert float(match(s, t).detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    assert isinstance(HiddenStateMatch(5, 5).projection, nn.Identity)
    state = DistillState(match)
    saved = json.loads(json.dumps(state.state_dict()))  # the checkpoint writes JSON
    other = DistillState(HiddenStateMatch(8, 5))
    other.load_state_dict(saved)
    assert torch.equal(other.match.projection.weight, match.projection.weight)


# ---------------------------------------------------------------- the build wrapper
@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    """A digits MLP teacher trained for a few steps (what matters here is the folder)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    build_run(
        "tiny/digits-mlp", ["trainer.max_steps=3", *QUIET], run_dir=run_dir, quiet=True,
        report=False,
    ).fit()  # fmt: skip
    return run_dir


def student_cfg(teacher, *more):
    over = [f"distill.teacher={teacher}", "model.hidden=[16]", "model.dropout=0.0", *QUIET]
    return load_recipe("tiny/digits-mlp", [*over, *more])


def test_teacher_stays_out_of_the_optimizer_and_the_checkpoint(digits_teacher, tmp_path):
    cfg = student_cfg(digits_teacher)
    run = build_run(cfg, run_dir=tmp_path / "student", quiet=True, report=False)
    model, task = run.components.model, run.components.task
    assert isinstance(task, DistillTask)
    opt = run.trainer.state.optimizer
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    run.fit()
    saved = load_file(tmp_path / "student" / "checkpoints" / "best" / "model.safetensors")
    assert set(saved) == set(model.state_dict())
    assert saved["net.0.weight"].shape == (16, 64)  # the student's, not the teacher's


def test_hidden_projection_trains_with_the_student(digits_teacher):
    cfg = student_cfg(
        digits_teacher, "distill.hidden_weight=1.0", "distill.student_layer=net.0",
        "distill.teacher_layer=net.0",
    )  # fmt: skip
    built = build(cfg, quiet=True)
    proj = built.task.match.projection
    assert proj.weight.shape == (256, 16)  # student width 16 -> teacher width 256
    opt = built.trainer.state.optimizer
    assert any(p is proj.weight for group in opt.param_groups for p in group["params"])
    assert "distill" in built.callbacks
    built.trainer.fit()
    assert "hidden_loss" in built.trainer.state.output.extras


def test_building_the_teacher_leaves_the_students_rng_alone(digits_teacher):
    plain = load_recipe("tiny/digits-mlp", ["model.hidden=[16]", *QUIET])
    a = build(plain, quiet=True)
    ra = torch.rand(3)
    b = build(student_cfg(digits_teacher, "model.dropout=0.1"), quiet=True)
    rb = torch.rand(3)
    assert torch.equal(ra, rb)  # same draws after either build
    assert torch.equal(a.model.net[0].weight, b.model.net[0].weight)


def test_mismatched_classes_missing_teacher_and_no_checkpoint(digits_teacher, tmp_path):
    over = [f"distill.teacher={digits_teacher}", *QUIET]
    with pytest.raises(ConfigError, match="predicts 10 classes but the student 3"):
        build(load_recipe("tiny/iris-mlp", over), quiet=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher_run(tmp_path / "nowhere")
    empty = tmp_path / "untrained"
    empty.mkdir()
    (empty / "config.yaml").write_text((digits_teacher / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_teacher_run(empty)
    layout = student_cfg(digits_teacher, "data.layout=image")
    with pytest.raises(ConfigError, match=r"inputs of shape \(64,\)"):
        build(layout, quiet=True)


def test_language_model_vocabulary_and_tokenizer_are_compared(tmp_path):
    cfg = load_recipe("tiny/shakespeare-char", [*QUIET, "distill.teacher=unused"])
    from bigtrain.build.distill import _prepared

    prepared = _prepared(cfg)
    task = object()
    other = tmp_path / "tokenizer.json"
    same = json.loads(prepared.tokenizer_path.read_text())
    other.write_text(json.dumps(same))
    teacher = Teacher(nn.Identity(), "language_model", None, prepared.vocab_size, other, 64)
    check_compatible(teacher, cfg, task)  # the same tokenizer: fine
    wider = Teacher(nn.Identity(), "language_model", None, prepared.vocab_size + 5, other, 64)
    with pytest.raises(ConfigError, match="vocabulary of"):
        check_compatible(wider, cfg, task)
    other.write_text(json.dumps({**same, "changed": True}))
    with pytest.raises(ConfigError, match="tokenizer.json differs"):
        check_compatible(teacher, cfg, task)
    short = Teacher(nn.Identity(), "language_model", None, prepared.vocab_size, None, 8)
    with pytest.raises(ConfigError, match="block_size"):
        check_compatible(short, cfg, task)
    classifier = Teacher(nn.Identity(), "classifier", (64,), 10)
    with pytest.raises(ConfigError, match="is a classifier but the student is a language model"):
        check_compatible(classifier, cfg, task)


def test_config_needs_exactly_one_teacher():
    with pytest.raises(ConfigError, match="exactly one"):
        load_recipe("tiny/digits-mlp", ["distill.alpha=0.5"])
    with pytest.raises(ConfigError, match="student_layer"):
        load_recipe("tiny/digits-mlp", ["distill.teacher=x", "distill.hidden_weight=1"])
    with pytest.raises(ConfigError, match="temperature"):
        load_recipe("tiny/digits-mlp", ["distill.teacher=x", "distill.temperature=0"])
