"""The engine alone: event order, gradient accumulation, clipping, bitwise resume, checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.core.callback import Callback, CallbackList, overrides
from bigtrain.core.checkpoint import load_checkpoint, save_checkpoint
from bigtrain.core.events import Event
from bigtrain.core.loop import Trainer, split_batch
from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import CheckpointError, TrainingError


class TinyLoader:
    """A minimal BatchSource: shuffled slices of in-memory tensors, resumable."""

    def __init__(self, x, y, batch_size, seed=0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.epoch, self.position = 0, 0
        self.gen = torch.Generator().manual_seed(seed)
        self.gen_state = self.gen.get_state()

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        self.gen.set_state(self.gen_state)
        perm = torch.randperm(len(self.x), generator=self.gen)
        while self.position * self.batch_size < len(self.x):
            idx = perm[self.position * self.batch_size : (self.position + 1) * self.batch_size]
            self.position += 1
            yield self.x[idx], self.y[idx]
        self.epoch, self.position = self.epoch + 1, 0
        self.gen_state = self.gen.get_state()

    def at_epoch_end(self):
        return self.position * self.batch_size >= len(self.x)

    def steps_in_epochs(self, epochs, batch_size_at):
        raise NotImplementedError

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "generator": self.gen_state}

    def load_state_dict(self, s):
        self.epoch, self.position, self.gen_state = s["epoch"], s["position"], s["generator"]


class CE(Task):
    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return StepOutput(F.cross_entropy(logits, y), len(y), logits.detach(), y)


def make(seed=0, n=96, batch=16, **kw):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    val = [(x[:32], y[:32])]
    return Trainer(model, CE(), opt, TinyLoader(x, y, batch), val_data=val, **kw)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def _add(self, name):
        return lambda state: self.events.append(name)

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return object.__getattribute__(self, "_add")(name[3:])
        return object.__getattribute__(self, name)


class AllHooks(Callback):
    pass


for _e in Event:  # a callback that overrides every hook, recording the order
    setattr(AllHooks, _e.hook, (lambda name: lambda self, s: self.events.append(name))(_e.value))


def test_event_order_golden():
    rec = AllHooks()
    rec.events = []
    t = make(n=32, batch=16, max_epochs=1, callbacks=[rec])
    t.fit()
    assert rec.events == [
        "setup",
        "fit_start",
        "epoch_start",
        "batch_start",
        "micro_batch_end",
        "after_backward",
        "after_step",
        "step_end",
        "batch_start",
        "micro_batch_end",
        "after_backward",
        "after_step",
        "eval_start",
        "eval_end",
        "epoch_end",
        "step_end",
        "fit_end",
    ]


def test_callbacks_that_do_not_override_are_skipped():
    class OnlyStep(Callback):
        def on_after_step(self, state):
            pass

    cb = OnlyStep()
    assert overrides(cb, Event.AFTER_STEP) and not overrides(cb, Event.BATCH_START)
    cl = CallbackList([cb])
    assert cl.has(Event.AFTER_STEP) and not cl.has(Event.BATCH_START)


def test_split_batch_shares_sum_to_one_and_cover():
    x, y = torch.arange(10.0), torch.arange(10)
    parts = split_batch((x, y), 3)
    assert sum(s for _, s in parts) == pytest.approx(1.0)
    assert torch.equal(torch.cat([p[0] for p, _ in parts]), x)


def test_gradient_accumulation_equals_large_batch():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    F.cross_entropy(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for (xb, yb), share in split_batch((x, y), 3):  # uneven micro-batches: 3, 4, 3
        (F.cross_entropy(model(xb), yb) * share).backward()
    for a, b in zip(full, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_trainer_accumulation_matches_plain_training():
    a = make(seed=3, max_steps=6, grad_accum=1)
    b = make(seed=3, max_steps=6, grad_accum=4)
    # dropout draws differ between one big and four small forwards: compare without dropout
    for t in (a, b):
        t.state.model[2].p = 0.0
        t.fit()
    for p, q in zip(a.state.model.parameters(), b.state.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_schedule_sets_lr_per_step():
    seen = []

    class LR(Callback):
        def on_after_step(self, s):
            seen.append(s.optimizer.param_groups[0]["lr"])

    t = make(max_steps=4, schedule=lambda step: 0.1 * (step + 1), callbacks=[LR()])
    t.fit()
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_bitwise_resume(tmp_path):
    straight = make(seed=5, max_steps=12)
    straight.fit()
    first = make(seed=5, max_steps=6)
    first.fit()
    first.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # the resumed process starts with other RNG states
    second = make(seed=99, max_steps=12)
    second.fit(resume_from=tmp_path / "ckpt")
    assert second.state.step == 12
    for p, q in zip(straight.state.model.parameters(), second.state.model.parameters()):
        assert torch.equal(p, q)
    for (k, v), (_, w) in zip(
        straight.state.optimizer.state_dict()["state"].items(),
        second.state.optimizer.state_dict()["state"].items(),
    ):
        for name in v:
            assert torch.equal(v[name], w[name]), (k, name)


def test_checkpoint_is_atomic_and_corruption_is_one_line(tmp_path):
    t = make(max_steps=1)
    t.fit()
    path = t.save(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp folders left
    meta = json.loads((path / "trainer.json").read_text())
    assert meta["format_version"] == 2
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path, t.state.model)
    (path / "state.safetensors").unlink()
    with pytest.raises(CheckpointError, match="state.safetensors is missing"):
        load_checkpoint(path, t.state.model)


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "c", model, {"step": 1})
    import bigtrain.core.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "c", model, {"step": 2})
    assert load_checkpoint(tmp_path / "c", model)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_nan_loss_stops_before_the_update():
    from bigtrain.callbacks.health import HealthCheck

    t = make(max_steps=5, callbacks=[HealthCheck(report=lambda m: None)])
    before = [p.detach().clone() for p in t.state.model.parameters()]
    t.state.train_data.x[:] = float("nan")
    with pytest.raises(TrainingError, match="loss became nan at step 0"):
        t.fit()
    for p, q in zip(before, t.state.model.parameters()):
        assert torch.equal(p, q)


def test_exploding_gradient_is_named():
    from bigtrain.callbacks.health import HealthCheck

    messages = []
    hc = HealthCheck(check_every=1, exploding_above=1e-6, report=messages.append)
    make(max_steps=2, callbacks=[hc]).fit()
    assert any("exploding gradient: 0.weight" in m for m in messages)


def test_vanishing_gradient_in_a_deep_sigmoid_net_is_named():
    from bigtrain.callbacks.health import HealthCheck

    torch.manual_seed(0)
    layers = []
    for _ in range(12):  # sigmoid' <= 0.25: the gradient shrinks layer by layer
        layers += [nn.Linear(8, 8), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(8, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    messages = []
    hc = HealthCheck(check_every=1, vanishing_below=1e-6, report=messages.append)
    Trainer(
        model,
        CE(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        TinyLoader(x, y, 32),
        max_steps=1,
        callbacks=[hc],
    ).fit()
    assert any("vanishing gradient: 0.weight" in m for m in messages), messages
    assert not any("22.weight" in m for m in messages)  # the last layer still learns


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_inf_gradient_is_an_error_unless_fp16_loss_scaling_skips_the_step(loss_scaling):
    from bigtrain.callbacks.health import HealthCheck

    class InfGrad(Callback):
        def on_after_backward(self, state):
            next(state.model.parameters()).grad[0, 0] = float("inf")

    hc = HealthCheck(check_every=1, report=lambda m: None)
    t = make(max_steps=1, callbacks=[InfGrad(), hc])
    t.strategy.loss_scaling = loss_scaling
    if loss_scaling:
        t.fit()  # the scaler would skip the step; the health check does not stop the run
    else:
        with pytest.raises(TrainingError, match="gradient of 0.weight is inf"):
            t.fit()


def test_callback_state_is_keyed_by_name_and_absent_callbacks_are_ignored(tmp_path):
    from bigtrain.callbacks.checkpointing import EarlyStopping

    stop = EarlyStopping("val/loss", "min", patience=5)
    t = make(max_steps=3, callbacks={"early_stopping": stop, "recorder": AllHooks()})
    t.callbacks.named["recorder"].events = []
    t.fit()
    t.save(tmp_path / "c")
    resumed_stop = EarlyStopping("val/loss", "min", patience=5)
    r = make(max_steps=6, callbacks={"early_stopping": resumed_stop})  # no recorder now
    r.load(tmp_path / "c")
    assert (resumed_stop.best, resumed_stop.bad) == (stop.best, stop.bad) and stop.best is not None
    r.fit()
    assert r.state.step == 6
