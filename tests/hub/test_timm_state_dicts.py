"""Every az_ model's state dict is its timm twin's: the same keys in the same order, the same
shapes, so ``load_state_dict`` works strictly both ways (built on the meta device: no weights are
allocated). The families' own tests load both ways and compare logits (tests/zoo/test_maxvit.py,
test_halonet.py, test_shvit.py, test_davit.py); DaViT's strict round trip is here."""
import pytest
import timm
import torch

import attnzoo

AZ = [n for n in attnzoo.list_models() if n.startswith("az_")]
# the smallest of each az_ family (CI); the rest run extended
SMALLEST = {"az_maxvit_rmlp_pico_rw_256", "az_davit_tiny", "az_halonet26t", "az_shvit_s1"}


def _meta_state_dict(name):
    with torch.device("meta"):
        return timm.create_model(name).state_dict()


@pytest.mark.parametrize("name", [n if n in SMALLEST else pytest.param(n, marks=pytest.mark.extended) for n in AZ])
def test_keys_shapes_and_dtypes_are_the_timm_twins(name):
    ours, theirs = _meta_state_dict(name), _meta_state_dict(name[len("az_"):])
    assert [(k, v.shape, v.dtype) for k, v in ours.items()] == [(k, v.shape, v.dtype) for k, v in theirs.items()]


def test_every_az_family_is_covered():
    assert {attnzoo.get_entry(n).family for n in SMALLEST} == {attnzoo.get_entry(n).family for n in AZ}


def test_davit_state_dict_round_trip():
    """Strict both ways (built on the meta device, random tensors assigned); the logits of timm's
    weights in az_davit_* are tests/zoo/test_davit.py's."""
    with torch.device("meta"):
        ref, ours, back = timm.create_model("davit_tiny"), timm.create_model("az_davit_tiny"), timm.create_model("davit_tiny")
    g = torch.Generator().manual_seed(0)
    theirs = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in ref.state_dict().items()}
    ours.load_state_dict(theirs, strict=True, assign=True)
    back.load_state_dict(ours.state_dict(), strict=True, assign=True)
    assert all(torch.equal(v, theirs[k]) for k, v in back.state_dict().items())
