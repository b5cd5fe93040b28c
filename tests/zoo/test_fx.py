"""FX: every family traces symbolically (torch.fx, as timm's and torchvision's feature extractors
do), so ``features_only=True, feature_cls='fx'`` works and gives the default wrapper's features.

Shape-dependent code (input checks, pad-to-fit and crop-back) lives in modules and functions
registered with timm's ``register_notrace_module`` / ``register_notrace_function``; they appear as
single nodes of the graph. One model per family here, in CI; timm's own ``test_model_forward_fx``
/ ``test_model_backward_fx`` run in the extended tier of tests/timm_suite.
"""
from __future__ import annotations

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules

import attnzoo  # noqa: F401  (registers the models)

from .test_registry import ONE_PER_FAMILY

fx_extraction = pytest.importorskip("torchvision.models.feature_extraction")


def _tracer_kwargs() -> dict:
    return dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_fx_features_equal_the_default_wrapper_and_train(name):
    torch.manual_seed(0)
    default = timm.create_model(name, features_only=True).eval()
    torch.manual_seed(0)  # the same initial weights (the wrappers prefix them differently)
    fx = timm.create_model(name, features_only=True, feature_cls="fx").eval()
    ref_params = {n.split(".", 1)[1]: p for n, p in default.named_parameters()}
    fx_params = {n.split(".", 1)[1]: p for n, p in fx.named_parameters()}
    assert fx_params.keys() == ref_params.keys()
    assert all(torch.equal(p, ref_params[n]) for n, p in fx_params.items())
    assert fx.feature_info.channels() == default.feature_info.channels()
    assert fx.feature_info.reduction() == default.feature_info.reduction()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, ref = fx(x), default(x)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # The traced module trains: every parameter gets a gradient.
    fx.train()
    sum(f.float().mean() for f in fx(torch.randn(2, 3, 32, 32))).backward()  # batch 2: BatchNorm trains
    missing = [n for n, p in fx.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_torchvision_feature_extractor_traces_a_whole_model():
    torch.manual_seed(0)
    model = timm.create_model("nat_mini", num_classes=10).eval()
    _, eval_nodes = fx_extraction.get_graph_node_names(model, tracer_kwargs=_tracer_kwargs())
    extractor = fx_extraction.create_feature_extractor(model, return_nodes=[eval_nodes[-1]],
                                                       tracer_kwargs=_tracer_kwargs())
    x = torch.randn(1, 3, 48, 80)  # not a multiple of the windows: the padding is a traced leaf
    with torch.no_grad():
        (out,) = extractor(x).values()
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
