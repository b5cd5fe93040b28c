"""Exact shape checks on the pretrained load path: a checkpoint converts only the layouts its
family's filter knows (a 1x1 conv weight (O, I, 1, 1) <-> a Linear weight (O, I), the documented
renames); any other shape difference is refused naming the key, both shapes and the file, before
anything is copied.

For the smallest model of each family, three damaged copies of its own state dict go through
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``: a non-square
2-D weight transposed (or a 1x1 conv weight given as its transposed Linear form), a bias one
element too long, and the input conv's weight with the right element count in another shape.
Before: MaxViT's filter reshaped any tensor whose element count matched (the transposed weight
loaded, scrambled), and no family's input conv was shape-checked (timm's loader ended in a bare
"size mismatch" naming no file).

The models are built on the meta device and the checkpoints hold stride-0 (expanded) tensors, so
the whole file costs a few seconds; one real MaxViT load shows the known conversion still loads.
"""
import functools
import re

import pytest
import torch
import timm

import attnzoo  # noqa: F401  (registers the models)
from attnzoo.hub import PretrainedLoadError

FAMILY_MODELS = ["nat_mini", "az_maxvit_rmlp_pico_rw_256", "biformer_tiny", "az_halonet26t", "az_davit_tiny",
                 "transnext_micro", "az_shvit_s1"]


@functools.lru_cache(maxsize=None)
def _shapes(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}, model.pretrained_cfg


def _cheap_state(shapes):
    """Zeros in the model's shapes, each a stride-0 view of one element (a file of a few KB)."""
    return {k: torch.zeros((), dtype=dt).expand(s) for k, (s, dt) in shapes.items()}


def _transposed_case(shapes, classifier):
    """(key, tensor): a non-square 2-D weight transposed, or a 1x1 conv weight (O, I, 1, 1) given
    as the transpose of its Linear form, (I, O); never the classifier."""
    heads = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    for key, (s, _) in shapes.items():
        if key.endswith(".weight") and len(s) == 2 and s[0] != s[1] and not key.startswith(heads):
            return key, torch.randn(s[1], s[0])
    for key, (s, _) in shapes.items():
        if key.endswith(".weight") and len(s) == 4 and s[2:] == (1, 1) and s[0] != s[1]:
            return key, torch.randn(s[1], s[0])
    raise AssertionError("no non-square 2-D or 1x1 weight")


CASES = ("transposed", "bias", "same numel")


def _case(name, case):
    shapes, cfg = _shapes(name)
    key_t, value_t = _transposed_case(shapes, cfg["classifier"])
    key_b = next(k for k, (s, _) in shapes.items() if k.endswith(".bias") and len(s) == 1)
    first_conv = cfg["first_conv"]
    key_c = (first_conv if isinstance(first_conv, str) else first_conv[0]) + ".weight"
    conv = shapes[key_c][0]
    assert len(conv) == 4 and conv[2] * conv[3] > 1, conv
    cases = {
        "transposed": (key_t, value_t),
        "bias": (key_b, torch.randn(shapes[key_b][0][0] + 1)),
        "same numel": (key_c, torch.randn(conv).reshape(conv[0], -1, 1, 1)),  # (O, I*k*k, 1, 1)
    }
    return shapes, *cases[case]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_other_shape_is_refused_naming_key_shapes_and_file(name, case, tmp_path):
    shapes, key, value = _case(name, case)
    state = _cheap_state(shapes)
    state[key] = value
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedLoadError) as info:
        timm.create_model(name, pretrained=True, device="meta", pretrained_cfg_overlay=dict(file=str(path)))
    text = str(info.value)
    assert text.startswith(f"{name}: tensor '{key}' of '{path}' has shape {tuple(value.shape)}, {name} needs {shapes[key][0]}"), text
    assert text.endswith("nothing was loaded"), text


def test_maxvit_transposed_linear_weight_is_refused_and_known_layouts_still_load(tmp_path):
    """The issue's case on a real model: a Linear weight stored transposed loaded scrambled (max
    difference 0.27); now it is refused. A Linear weight stored as a 1x1 conv (O, I, 1, 1), the
    one conversion timm's MaxViT filter exists for, still loads to the same values."""
    from safetensors.torch import save_file

    name = "az_maxvit_rmlp_pico_rw_256"
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if k.endswith("mlp.fc1.weight") and v.dim() == 2 and v.shape[0] != v.shape[1])
    transposed = dict(state, **{key: state[key].t().contiguous()})
    save_file(transposed, str(tmp_path / "transposed.safetensors"))
    with pytest.raises(PretrainedLoadError, match=re.escape(f"tensor '{key}' of '{tmp_path / 'transposed.safetensors'}' has shape "
                                                            f"{tuple(state[key].shape[::-1])}, {name} needs {tuple(state[key].shape)}")):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "transposed.safetensors")))

    as_conv = dict(state, **{key: state[key][:, :, None, None].contiguous()})
    save_file(as_conv, str(tmp_path / "conv.safetensors"))
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "conv.safetensors")))
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_another_models_weights_and_a_missing_key_are_refused_by_name(tmp_path):
    """Another model's state dict, and one tensor short: one error naming the file and the keys
    (before: torch's 'Unexpected key(s) in state_dict' / 'Missing key(s)' traceback)."""
    shapes, _ = _shapes("az_shvit_s1")
    other, _ = _shapes("nat_mini")
    torch.save(_cheap_state(other), tmp_path / "nat.pth")
    with pytest.raises(PretrainedLoadError, match=rf"^az_shvit_s1: '{re.escape(str(tmp_path / 'nat.pth'))}' is not a checkpoint of "
                                                  r"az_shvit_s1 \(only 0 of its \d+ names are az_shvit_s1's\): it lacks"):
        timm.create_model("az_shvit_s1", pretrained=True, device="meta", pretrained_cfg_overlay=dict(file=str(tmp_path / "nat.pth")))
    state = _cheap_state(shapes)
    gone = sorted(state)[3]
    del state[gone]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(PretrainedLoadError, match=rf"^az_shvit_s1: '{re.escape(str(tmp_path / 'short.pth'))}' lacks 1 of az_shvit_s1's "
                                                  rf"\d+ tensors \('{re.escape(gone)}'\); nothing was loaded"):
        timm.create_model("az_shvit_s1", pretrained=True, device="meta", pretrained_cfg_overlay=dict(file=str(tmp_path / "short.pth")))


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")  # the meta model takes no values
@pytest.mark.parametrize("name, kwargs", [
    ("az_shvit_s1", dict(num_classes=0)),  # the BN-Linear head goes with the classifier
    ("az_shvit_s1", dict(num_classes=7, in_chans=1)),
    ("nat_mini", dict(in_chans=4)),
    ("az_maxvit_rmlp_pico_rw_256", dict(num_classes=0, global_pool="")),
])
def test_timms_own_adaptations_still_load(name, kwargs, tmp_path):
    """The exact checks leave timm's adaptations alone: a classifier dropped for another
    num_classes (with the rest of a head built for it) and an input conv adapted to in_chans."""
    shapes, _ = _shapes(name)
    torch.save(_cheap_state(shapes), tmp_path / "own.pth")
    model = timm.create_model(name, pretrained=True, device="meta", pretrained_cfg_overlay=dict(file=str(tmp_path / "own.pth")), **kwargs)
    assert model.num_classes == kwargs.get("num_classes", 1000)
