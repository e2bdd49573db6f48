"""Direction networks: shapes at any size, masking, gradients, sizes, config round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepcd.nn import (
    ARCHITECTURES,
    GridLaplacian,
    build_network,
    coarsening_plan,
    count_parameters,
    dcdm_loss,
)
from deepcd.nn import flops_per_unknown as fpu
from deepcd.problems import AIR, FLUID, SOLID

ODD = {2: (13, 17), 3: (9, 12, 15)}
ARCHS = sorted(ARCHITECTURES)
# networks that take the flags as optional input channels (vcycle always needs the flags: it
# builds its operator from them; tests/test_nn_vcycle.py)
CHANNEL_ARCHS = [a for a in ARCHS if a != "vcycle"]


def random_flags(shape, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    flags = rng.choice([FLUID, SOLID, AIR], size=shape, p=[0.7, 0.2, 0.1]).astype(np.int8)
    return torch.as_tensor(flags)


def small(arch: str, dim: int, **config):
    """Every module used on the small odd grids: multilevel coarsens to 2 (three levels)."""
    if arch in ("multilevel", "vcycle"):
        config.setdefault("coarsest", 2)
    if arch == "vcycle":  # no flag channels and no kernel size: a polynomial degree instead
        config.pop("use_flags", None)
        if config.pop("kernel_size", None):
            config["degree"] = 4
    torch.manual_seed(0)
    return build_network(arch, dim, **config)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", CHANNEL_ARCHS)
@pytest.mark.parametrize("use_flags", [False, True])
def test_odd_sizes_and_masking(arch, dim, use_flags):
    net = small(arch, dim, use_flags=use_flags)
    shape = ODD[dim]
    flags = random_flags(shape)
    r = torch.randn(2, 1, *shape)
    with torch.no_grad():
        q = net(r, flags)
        assert q.shape == r.shape
        assert torch.isfinite(q).all()
        assert torch.all(q[:, 0][:, flags != FLUID] == 0)
        assert q[:, 0][:, flags == FLUID].abs().sum() > 0
        if not use_flags:
            assert net(r).shape == r.shape  # flags optional then: no masking
        else:
            with pytest.raises(ValueError, match="use_flags"):
                net(r)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter(arch, dim):
    net = small(arch, dim, use_flags=True)
    shape = ODD[dim]
    flags = torch.stack([random_flags(shape, 1), random_flags(shape, 2)])
    op = GridLaplacian(flags, AIR, dim=dim)
    torch.manual_seed(1)
    b = op.mask(torch.randn(2, 1, *shape))
    loss = dcdm_loss(net(b, flags), b, op)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_paper_parameter_counts():
    assert abs(count_parameters(build_network("paper-64", 3)) - 97_000) < 9_700
    assert abs(count_parameters(build_network("paper-128", 3)) - 153_000) < 15_300
    # exact, for the record: 15 3×3×3 convs + 1×1×1 projection
    conv = 16 * 16 * 27 + 16
    assert count_parameters(build_network("paper-64", 3)) == (27 * 16 + 16) + 14 * conv + 17


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dim", [2, 3])
def test_config_round_trip(arch, dim):
    net = small(arch, dim, use_flags=True, kernel_size=5)
    config = json.loads(json.dumps(net.config))
    again = build_network(net.arch, **config)
    assert type(again) is type(net)
    assert again.config == net.config
    sd, sd2 = net.state_dict(), again.state_dict()
    assert list(sd) == list(sd2)
    assert all(sd[k].shape == sd2[k].shape for k in sd)
    again.load_state_dict(sd)
    r = torch.randn(1, 1, *ODD[dim])
    flags = random_flags(ODD[dim])
    with torch.no_grad():
        torch.testing.assert_close(again(r, flags), net(r, flags), rtol=0, atol=0)


def test_multilevel_shared_weights_any_size():
    net = build_network("multilevel", 3, channels=[4, 8, 16], coarsest=4)
    n_params = count_parameters(net)
    assert net.depth((16, 16, 16)) == 2
    assert net.depth((64, 64, 64)) == 4
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
        assert net(torch.randn(1, 1, 64, 64, 64)).shape == (1, 1, 64, 64, 64)
    assert count_parameters(net) == n_params
    assert count_parameters(build_network(net.arch, **net.config)) == n_params
    # cost per unknown stays bounded as the grid (and the depth) grows
    assert fpu(net, (64, 64, 64)) < 1.1 * fpu(net, (16, 16, 16))


def test_coarsening_plan():
    assert coarsening_plan((4, 4), 4) == []
    assert coarsening_plan((13, 17), 4) == [(True, True), (True, True), (False, True)]
    # a thin axis stops coarsening once it is small (semi-coarsening)
    assert coarsening_plan((64, 64, 8), 4) == [(True,) * 3] + [(True, True, False)] * 3


def test_flops_per_unknown_paper_analytic():
    net = build_network("paper-64", 3)
    conv = 16 * 16 * 27
    fine, coarse = (27 * 16 + 8 * conv + 16), 6 * conv / 8  # lift+pairs+projection; coarse /8
    assert fpu(net, (64, 64, 64)) == pytest.approx(fine + coarse)
    assert fpu(build_network("paper-64", 2), (256, 256)) == pytest.approx(
        9 * 16 + 8 * 16 * 16 * 9 + 16 + 6 * 16 * 16 * 9 / 4
    )


def test_linear_multilevel_is_linear():
    torch.manual_seed(0)
    net = build_network("multilevel", 2, activation="none", dtype=torch.float64)
    assert net.config["bias"] is False
    r, s = torch.randn(2, 1, 1, 19, 11, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(2 * r - 3 * s), 2 * net(r) - 3 * net(s))


def test_bfloat16_forward():
    net = build_network("multilevel", 3, dtype=torch.bfloat16)
    with torch.inference_mode():
        q = net(torch.randn(1, 1, 9, 10, 11, dtype=torch.bfloat16), random_flags((9, 10, 11)))
    assert q.dtype == torch.bfloat16 and torch.isfinite(q).all()


def test_bad_input():
    net = build_network("paper-64", 3)
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="flags"):
        net(torch.zeros(1, 1, 8, 8, 8), torch.zeros(8, 8, 7, dtype=torch.int8))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("resnet", 3)
    with pytest.raises(ValueError, match="dim"):
        build_network("multilevel", 4)
    with pytest.raises(ValueError, match="activation"):
        build_network("multilevel", 2, activation="tanhh")


def test_cpu_fast_conv_matches_stock_conv():
    from deepcd.nn.networks import Conv3d

    torch.manual_seed(0)
    fast = Conv3d(4, 4, 3, padding=1)
    stock = torch.nn.Conv3d(4, 4, 3, padding=1)
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(1, 4, 16, 16, 16, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = fast(x), stock(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, stock.weight.grad, rtol=1e-4, atol=1e-3)
