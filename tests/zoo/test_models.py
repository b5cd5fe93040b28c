"""The generic suite: every registered attnzoo model, timm's model conventions (as timm's own
tests/test_models.py checks them), at small sizes."""
import gc
import math

import pytest
import timm
import torch

import attnzoo
from timm.optim import create_optimizer_v2

MODELS = attnzoo.list_models()
SMALLEST = {family: next(n for n in MODELS if attnzoo.get_entry(n).family == family)
            for family in dict.fromkeys(attnzoo.get_entry(n).family for n in MODELS)}

# Models above this many parameters (millions) run the heavy checks (backward, features_only) in
# the extended tier only; in CI they still build on the meta device and count their parameters.
BIG_M = 100


def _params_m(name):
    published = attnzoo.get_entry(name).published.params_m
    if published is not None:
        return published
    with torch.device("meta"):
        return sum(p.numel() for p in timm.create_model(name).parameters()) / 1e6


def _tiered(names):
    return [pytest.param(n, marks=pytest.mark.extended) if _params_m(n) > BIG_M else n for n in names]


HEAVY = _tiered(MODELS)
# Checks whose code path is the same for every variant of a family (input sizes, intermediates, the
# state-dict round trip): CI runs the smallest model of each family, the extended tier every model.
PER_FAMILY = list(SMALLEST.values()) + [pytest.param(n, marks=pytest.mark.extended)
                                        for n in MODELS if n not in SMALLEST.values()]


@pytest.fixture(scope="module")
def built():
    """An eval-mode instance of a model, shared by consecutive read-only tests of this module.

    Only the last model built is kept (parametrized tests run one model's cases back to back),
    so the largest variants are never in memory together."""
    cache = {}

    def get(name):
        if name not in cache:
            cache.clear()
            gc.collect()
            torch.manual_seed(0)
            cache[name] = timm.create_model(name).eval()
        return cache[name]

    yield get
    cache.clear()


@pytest.mark.parametrize("name", [n for n in MODELS if attnzoo.get_entry(n).published.params_m is not None])
def test_param_count_matches_published(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    published = attnzoo.get_entry(name).published.params_m
    assert abs(params / published - 1) <= 0.01, f"{name}: {params:.2f}M vs published {published}M"


@pytest.mark.parametrize("name", HEAVY)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.0)  # stochastic depth may drop a whole branch
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    # Train-mode BatchNorm removes any per-channel constant, so a bias feeding one gets an exactly
    # zero gradient in train mode (SHViT's conv-BN biases, a BN-Linear head on a batch of two); in
    # eval mode BN is affine and every parameter must matter.
    model.eval()
    model.zero_grad()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient for {zero[:5]}"


@pytest.mark.parametrize("size", [(224, 224), (199, 257), (64, 96), (32, 32)])
@pytest.mark.parametrize("name", PER_FAMILY)
def test_any_input_size(name, size, built):
    _check_forward(built(name), size)


@pytest.mark.extended
@pytest.mark.parametrize("name", [n for n in MODELS if _params_m(n) > BIG_M])
def test_big_models_run_at_an_odd_size(name, built):
    _check_forward(built(name), (97, 131))


def _check_forward(model, size):
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", HEAVY)
def test_features_only_matches_feature_info(name):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True).eval()
    h, w = 199, 257
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    info = model.feature_info
    assert len(feats) == len(info.channels())
    for f, c, r in zip(feats, info.channels(), info.reduction()):
        assert f.shape == (1, c, math.ceil(h / r), math.ceil(w / r))
    assert info.reduction() == [i["reduction"] for i in timm.create_model(name).feature_info]
    assert all(r > 1 and r & (r - 1) == 0 for r in info.reduction())  # powers of two
    assert all(a < b for a, b in zip(info.reduction(), info.reduction()[1:]))  # increasing


@pytest.mark.parametrize("name", PER_FAMILY)
def test_forward_intermediates_agree_with_forward_features(name, built):
    model = built(name)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, norm=True)
        feats = model.forward_features(x)
        nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC", intermediates_only=True)
    torch.testing.assert_close(final, feats)
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        feats = feats.permute(0, 3, 1, 2)
    torch.testing.assert_close(inter[-1], feats)
    torch.testing.assert_close(nhwc[0].permute(0, 3, 1, 2), inter[1])
    assert [t.shape[1] for t in inter] == [i["num_chs"] for i in model.feature_info]


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_grad_checkpointing_gives_the_same_output_and_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # same dropout masks in both runs (MaxViT's bias MLP keeps timm's dropout)
        out = model(x)
        out.sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", PER_FAMILY)
def test_state_dict_round_trip(name, built, tmp_path):
    model = built(name)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    torch.manual_seed(1)
    other = timm.create_model(name).eval()
    other.load_state_dict(torch.load(tmp_path / "sd.pth", weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_classifier_reset_and_pre_logits(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    model.reset_classifier(10)
    assert model(x).shape == (1, 10)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, global_pool="")
    assert model(x).dim() == 4


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_optimizer_conventions(name):
    model = timm.create_model(name)
    names = dict(model.named_parameters())
    assert set(model.no_weight_decay()) <= set(names)  # may be empty: no position-bias tables
    groups = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(names[n]) in no_decay for n in model.no_weight_decay())
    matcher = model.group_matcher()
    assert set(matcher) >= {"stem", "blocks"}


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_backend_argument_reaches_every_mixer(name):
    model = timm.create_model(name, backend="reference")
    mixers = [m for m in model.modules() if hasattr(m, "backend")]
    assert mixers and all(m.backend == "reference" for m in mixers)
    assert "backend=reference" in repr(model)


TWINNED = [n for n in SMALLEST.values() if n.startswith("az_")]


@pytest.mark.parametrize("name", TWINNED)
def test_az_models_are_drop_in_for_their_timm_twin(name, built):
    """forward_features / forward_head / features_only shapes and the pretrained cfg equal timm's."""
    twin_name = name[len("az_"):]
    ours = built(name)
    theirs = timm.create_model(twin_name).eval()
    size = theirs.pretrained_cfg["input_size"][1:]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        a, b = ours.forward_features(x), theirs.forward_features(x)
        assert a.shape == b.shape
        assert ours.forward_head(a, pre_logits=True).shape == theirs.forward_head(b, pre_logits=True).shape
    assert ours.num_features == theirs.num_features
    assert [i["num_chs"] for i in ours.feature_info] == [i["num_chs"] for i in theirs.feature_info]
    assert [i["reduction"] for i in ours.feature_info] == [i["reduction"] for i in theirs.feature_info]
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "license", "hf_hub_id"):
        assert ours.pretrained_cfg.get(key) == theirs.pretrained_cfg.get(key), key


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_empty_batch_and_unbatched_input(name, built):
    """B = 0 gives empty logits and features (as timm's davit / shvit); a 3-D (unbatched) image
    gets one error naming the expected [B, C, H, W] layout."""
    model = built(name)
    with torch.no_grad():
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, model.num_classes)
        feats = model.forward_features(torch.randn(0, 3, 64, 64))
    assert feats.shape[0] == 0 and model.num_features in feats.shape[1:]  # NCHW or NHWC, as the twin
    with pytest.raises(ValueError, match=r"expects images \[B, C, H, W\].*unsqueeze"):
        model(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", list(SMALLEST.values()))
def test_non_float_images_are_refused_naming_the_dtype(name, built):
    """Before: a uint8 / bool batch ended in 'expected scalar type Byte but found Float' or
    '"slow_conv2d_cpu" not implemented for 'Bool'' (MaxViT, HaloNet, SHViT), or a bias-type error."""
    model = built(name)
    for dtype in (torch.uint8, torch.bool, torch.int64):
        with pytest.raises(TypeError, match=rf"expects float images \[B, C, H, W\], got dtype {dtype}: images must be floating point"):
            model(torch.zeros(1, 3, 64, 64, dtype=dtype))
        with pytest.raises(TypeError, match=rf"got dtype {dtype}"):  # the path of features_only=True models
            model.forward_intermediates(torch.zeros(1, 3, 64, 64, dtype=dtype), intermediates_only=True)
