import pytest
import torch

from lookalike.train.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(32, 216), (256, 64)])
def test_orthogonalize_pulls_every_singular_value_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, as momentum often has
    s = torch.linalg.svdvals(orthogonalize(g, steps=5))
    assert s.min() > 0.5 and s.max() < 1.5
    assert orthogonalize(g).shape == g.shape


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_groups_step_exactly_like_torch_sgd(nesterov):
    torch.manual_seed(0)
    a = torch.randn(5, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ours = Muon([dict(params=[a], lr=0.1, momentum=0.85, weight_decay=0.01)], nesterov=nesterov)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.85, weight_decay=0.01, nesterov=nesterov)
    for _ in range(4):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_filter_steps_keep_the_norm_and_turn_by_the_learning_rate():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3, requires_grad=True)
    opt = Muon([dict(params=[w], lr=0.05, momentum=0.9, orthogonal=True)])
    for _ in range(3):
        before = w.detach().clone()
        w.grad = torch.randn_like(w)
        opt.step()
        normalized = before * (16**0.5 / before.norm())
        step = (w.detach() - normalized).reshape(16, -1)
        # The step is lr x a near-orthogonal matrix: 16 singular values around 0.05.
        s = torch.linalg.svdvals(step)
        assert 0.02 < s.min() and s.max() < 0.08
    assert abs(float(w.detach().norm()) - 16**0.5) < 0.3


def test_state_dict_round_trip_continues_the_same_steps():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    grads = [(torch.randn_like(w), torch.randn_like(b)) for _ in range(5)]

    def make(w, b):
        return Muon([dict(params=[w], lr=0.05, momentum=0.9, orthogonal=True),
                     dict(params=[b], lr=0.1, momentum=0.85, weight_decay=0.01)])

    def run(opt, w, b, steps):
        for gw, gb in steps:
            w.grad, b.grad = gw.clone(), gb.clone()
            opt.step()

    opt = make(w, b)
    run(opt, w, b, grads[:2])
    saved = opt.state_dict()
    assert sorted(saved["state"]) == [0, 1] and saved["param_groups"][0]["params"] == [0]
    w2, b2 = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    restored = make(w2, b2)
    restored.load_state_dict(saved)
    run(opt, w, b, grads[2:])
    run(restored, w2, b2, grads[2:])
    assert torch.equal(w, w2) and torch.equal(b, b2)
    restored.zero_grad()
    assert w2.grad is None and b2.grad is None
    with pytest.raises(ValueError):
        Muon([dict(params=[w2, b2])]).load_state_dict(saved)


def test_loads_the_state_of_torch_sgd_and_continues_like_it():
    """Checkpoints written while the SGD recipes used torch.optim.SGD still resume."""
    torch.manual_seed(0)
    a = torch.randn(6, 2, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ref = torch.optim.SGD([a], lr=0.1, momentum=0.9, weight_decay=5e-4)
    grads = [torch.randn(6, 2) for _ in range(5)]
    for g in grads[:2]:
        a.grad = g.clone()
        ref.step()
    b.data.copy_(a.detach())
    ours = Muon([dict(params=[b], lr=0.1, momentum=0.9, weight_decay=5e-4)], nesterov=False)
    ours.load_state_dict(ref.state_dict())
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        ours.step()
    assert torch.allclose(a, b, atol=1e-6)
