"""optim.name: muon: the Muon half against Keller Jordan's published update, the AdamW half
against torch.optim.AdamW, the parameter split, and an exact state round trip."""

import copy

import torch
from torch import nn

import bigtrain.optim.muon as muon_module
from bigtrain.optim import OptimConfig, build_optimizer
from bigtrain.optim.muon import Fp32Muon, muon_param_groups


def reference_zeropower(g: torch.Tensor, steps: int = 5, dtype=torch.bfloat16) -> torch.Tensor:
    """zeropower_via_newtonschulz5 from github.com/KellerJordan/Muon (muon.py), as published
    (``dtype`` is bf16 there)."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.to(dtype)
    if g.size(-2) > g.size(-1):
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * A @ A
        x = a * x + B @ x
    if g.size(-2) > g.size(-1):
        x = x.mT
    return x


def reference_muon_step(p, grad, buf, lr, wd, beta=0.95):
    buf.lerp_(grad, 1 - beta)
    update = grad.lerp(buf, beta)  # nesterov
    update = reference_zeropower(update).float() * max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    p.mul_(1 - lr * wd)
    p.add_(update, alpha=-lr)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Embedding(64, 16), nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 24), nn.Linear(24, 32)
    )


def _loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    # full-rank gradients: Newton-Schulz amplifies bf16 noise in a low-rank gradient's null
    # space ~3.4^5 times, so two correct implementations differ there
    x = torch.randint(0, 64, (256,), generator=g)
    return nn.functional.cross_entropy(model(x), torch.randint(0, 32, (256,), generator=g))


def test_split_puts_hidden_matrices_on_muon_and_the_rest_on_adamw():
    m = _model()
    groups = {g["name"]: g for g in muon_param_groups(m, 0.1, lr=0.02, adam_lr=0.004)}
    assert [p.shape for p in groups["muon"]["params"]] == [(32, 16), (24, 32)]
    assert [p.shape for p in groups["adam_decay"]["params"]] == [(64, 16), (32, 24)]  # wte, head
    assert all(p.ndim == 1 for p in groups["adam_no_decay"]["params"])
    assert groups["adam_no_decay"]["weight_decay"] == 0.0
    assert abs(groups["adam_decay"]["lr_scale"] - 0.2) < 1e-12


def test_muon_half_matches_the_published_update_and_adam_half_matches_torch():
    model = _model()
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, OptimConfig(name="muon", lr=0.02, weight_decay=0.1, adam_lr=3e-3))
    hidden = [ref[1].weight, ref[3].weight]
    others = [p for p in ref.parameters() if all(p is not h for h in hidden)]
    adam_ref = torch.optim.AdamW(
        [
            {"params": [p for p in others if p.ndim == 2], "weight_decay": 0.1},
            {"params": [p for p in others if p.ndim == 1], "weight_decay": 0.0},
        ],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    bufs = [torch.zeros_like(h) for h in hidden]
    for step in range(4):
        with torch.no_grad():  # start each step from the same weights: compare one update
            for p, q in zip(model.parameters(), ref.parameters(), strict=True):
                q.copy_(p)
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        adam_ref.zero_grad()
        for h in hidden:
            h.grad = None
        _loss(ref, step).backward()
        with torch.no_grad():
            for h, buf in zip(hidden, bufs, strict=True):
                reference_muon_step(h, h.grad, buf, lr=0.02, wd=0.1)
        adam_ref.step()
        for (name, p), q, p0 in zip(
            model.named_parameters(), ref.parameters(), before, strict=True
        ):
            if name in ("1.weight", "3.weight"):
                # Newton-Schulz runs in bf16 and torch fuses its matmuls (addmm) where the
                # reference does not: the same update up to bf16 rounding, amplified by 5 steps
                ours, theirs = (p - p0).flatten(), (q - p0).flatten()
                cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=0)
                assert cos > 0.995 and abs(ours.norm() / theirs.norm() - 1) < 0.02, (name, cos)
            else:
                assert torch.allclose(p, q, atol=1e-7, rtol=1e-6), (name, (p - q).abs().max())
    assert not torch.equal(model[1].weight, _model()[1].weight)  # it moved


def test_state_round_trip_continues_bitwise():
    cfg = OptimConfig(name="muon", lr=0.02, weight_decay=0.1, adam_lr=3e-3)
    a = _model()
    opt_a = build_optimizer(a, cfg)
    for step in range(3):
        opt_a.zero_grad()
        _loss(a, step).backward()
        opt_a.step()
    b = copy.deepcopy(a)
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for step in range(3, 5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            for g in opt.param_groups:  # as the loop does: lr = schedule * lr_scale
                g["lr"] = 0.01 * g["lr_scale"]
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_fp32_muon_is_the_published_update_in_fp32_and_bf16_muon_agrees():
    """Fp32Muon (for CPUs that emulate bf16) against Keller's update run in fp32, to fp32
    rounding; and against torch.optim.Muon's bf16 iteration, up to bf16 rounding."""
    torch.manual_seed(0)
    w0 = torch.randn(48, 24)
    grads = [torch.randn(48, 24) for _ in range(3)]
    results = {}
    for name, cls in (("fp32", Fp32Muon), ("bf16", torch.optim.Muon)):
        w = nn.Parameter(w0.clone())
        opt = cls([w], lr=0.02, weight_decay=0.1)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        results[name] = w.detach()
    ref, buf = w0.clone(), torch.zeros_like(w0)
    for g in grads:
        buf.lerp_(g, 0.05)
        update = reference_zeropower(g.lerp(buf, 0.95), dtype=torch.float32)
        ref.mul_(1 - 0.02 * 0.1)
        ref.add_(update * max(1, 48 / 24) ** 0.5, alpha=-0.02)
    assert torch.allclose(results["fp32"], ref, atol=1e-5), (results["fp32"] - ref).abs().max()
    moved = lambda w: (w - w0).flatten()  # noqa: E731
    cos = nn.functional.cosine_similarity(moved(results["fp32"]), moved(results["bf16"]), dim=0)
    assert cos > 0.99, cos


def test_the_muon_half_iterates_in_fp32_only_where_bf16_is_emulated(monkeypatch):
    model = _model()
    for native, cls in ((True, torch.optim.Muon), (False, Fp32Muon)):
        monkeypatch.setattr(muon_module, "native_bf16", lambda device, native=native: native)
        opt = build_optimizer(model, OptimConfig(name="muon", lr=0.02, weight_decay=0.1))
        assert type(opt.muon) is cls
