import pytest
import torch

from drsntrain.model import DRSN, RSBU, ModelConfig, Thresholds, shortcut, soft_threshold


def test_soft_threshold_values():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    y = soft_threshold(x, torch.tensor(1.0))
    assert torch.equal(y, torch.tensor([-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]))


def test_soft_threshold_gradient_is_one_outside_and_zero_inside():
    x = torch.tensor([-3.0, -0.9, -0.2, 0.3, 0.8, 2.5], requires_grad=True)
    tau = torch.tensor(1.0)
    soft_threshold(x, tau).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0]))


def test_soft_threshold_broadcasts_per_sample_and_channel():
    x = torch.full((2, 3, 5), 2.0)
    tau = torch.tensor([[[0.5], [1.0], [3.0]], [[0.0], [2.0], [1.5]]])
    y = soft_threshold(x, tau)
    assert torch.allclose(y[:, :, 0], 2.0 - tau.squeeze(2).clamp(max=2.0))


@pytest.mark.parametrize("mode,width", [("cw", 6), ("cs", 1)])
def test_thresholds_are_positive_and_at_most_mean_magnitude(mode, width):
    torch.manual_seed(0)
    t = Thresholds(6, mode).train()
    r = torch.randn(32, 6, 100) * torch.rand(32, 6, 1) * 5
    tau, alpha = t(r)
    assert tau.shape == (32, width, 1)
    assert alpha.shape == (32, width)
    a = r.abs().mean(2)
    bound = a if mode == "cw" else a.mean(1, keepdim=True)
    assert (tau.squeeze(2) > 0).all()
    assert (tau.squeeze(2) <= bound + 1e-6).all()


def test_channel_shared_threshold_is_one_per_sample():
    unit = RSBU(4, 4, 1, "cs").eval()
    _, alpha = unit(torch.randn(3, 4, 64))
    assert alpha.shape == (3, 1)
    unit = RSBU(4, 4, 1, "cw").eval()
    _, alpha = unit(torch.randn(3, 4, 64))
    assert alpha.shape == (3, 4)


def test_shortcut_pads_odd_channel_growth_half_in_front_half_behind():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6) + 1
    y = shortcut(x, 7, stride=2)
    assert y.shape == (2, 7, 3)
    assert (y[:, 0] == 0).all()  # one new channel in front
    assert (y[:, 5:] == 0).all()  # two behind
    assert torch.equal(y[:, 1:5], x[:, :, ::2])


def test_shortcut_is_identity_without_stride_or_growth():
    x = torch.randn(2, 4, 9)
    assert torch.equal(shortcut(x, 4, 1), x)


def test_strided_unit_halves_odd_lengths_like_the_shortcut():
    unit = RSBU(4, 8, 2, "cw").eval()
    y, _ = unit(torch.randn(2, 4, 101))
    assert y.shape == (2, 8, 51)


@pytest.mark.parametrize("mode,units", [("cw", 12), ("cs", 12), ("none", None)])
def test_default_network_shapes(mode, units):
    model = DRSN(ModelConfig(shrinkage=mode, stem_channels=4, stages=((4, 4), (8, 4), (16, 4)))).eval()
    lengths = []
    model.stem.register_forward_hook(lambda m, i, o: lengths.append(tuple(o.shape[1:])))
    for u in model.units:
        u.register_forward_hook(lambda m, i, o: lengths.append(tuple(o[0].shape[1:])))
    logits, shrink = model(torch.randn(5, 1, 2048))
    assert logits.shape == (5, 10)
    assert lengths[0] == (4, 1024)
    assert lengths[1:5] == [(4, 512)] * 4
    assert lengths[5:9] == [(8, 256)] * 4
    assert lengths[9:] == [(16, 128)] * 4
    if units is None:
        assert shrink is None
    else:
        assert shrink.shape == (5, units)
        assert ((shrink > 0) & (shrink < 1)).all()


def test_resnet_baseline_is_the_same_network_without_shrinkage():
    cw = DRSN(ModelConfig(shrinkage="cw"))
    plain = DRSN(ModelConfig(shrinkage="none"))
    cw_keys = {k for k in cw.state_dict() if ".thresholds." not in k}
    assert cw_keys == set(plain.state_dict())


def test_model_is_invariant_to_input_gain_and_offset():
    model = DRSN(ModelConfig()).eval()
    x = torch.randn(3, 1, 2048)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(7.5 * x + 0.3)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("mode", ["cw", "cs"])
def test_thresholds_follow_abs_gap_fc_bn_relu_fc_sigmoid(mode):
    torch.manual_seed(1)
    t = Thresholds(5, mode).eval()
    t.bn.running_mean.uniform_(-0.5, 0.5)
    t.bn.running_var.uniform_(0.5, 2.0)
    r = torch.randn(4, 5, 33)
    a = r.abs().mean(2)
    alpha = torch.sigmoid(t.fc2(torch.relu(t.bn(t.fc1(a)))))
    scale = a if mode == "cw" else a.mean(1, keepdim=True)
    tau, got_alpha = t(r)
    assert torch.allclose(got_alpha, alpha)
    assert torch.allclose(tau.squeeze(2), alpha * scale)


def test_unit_is_pre_activation_with_shrinkage_and_no_relu_after_the_sum():
    torch.manual_seed(2)
    unit = RSBU(4, 6, 2, "cw").eval()
    x = torch.randn(3, 4, 40)
    r = unit.conv1(torch.relu(unit.bn1(x)))
    r = unit.conv2(torch.relu(unit.bn2(r)))
    tau, _ = unit.thresholds(r)
    want = soft_threshold(r, tau) + shortcut(x, 6, 2)
    got, _ = unit(x)
    assert torch.allclose(got, want)
    assert (got < 0).any()


def test_shrinkage_output_is_each_units_mean_alpha():
    model = DRSN(ModelConfig(stages=((4, 2), (8, 2)))).eval()
    alphas = []
    for u in model.units:
        u.register_forward_hook(lambda m, i, o: alphas.append(o[1].mean(1)))
    _, shrink = model(torch.randn(3, 1, 512))
    assert torch.allclose(shrink, torch.stack(alphas, 1))


def test_wide_strided_stem_shortens_every_later_layer():
    cfg = ModelConfig(window=8192, stem_channels=16, stem_kernel=64, stem_stride=32, stages=((16, 2), (32, 2), (64, 2)))
    assert cfg.feature_length() == 256 // 8
    logits, shrink = DRSN(cfg).eval()(torch.randn(3, 1, 8192))
    assert logits.shape == (3, 10) and shrink.shape == (3, 6)
    # The paper's stem stays the default.
    assert (ModelConfig().stem_kernel, ModelConfig().stem_stride) == (3, 2)
    with pytest.raises(ValueError, match="stem"):
        ModelConfig(stem_stride=0)
