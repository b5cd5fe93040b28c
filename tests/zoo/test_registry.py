"""Registration into timm: attnzoo adds names and never changes what an existing name builds."""
import json
import subprocess
import sys
import textwrap

import pytest
import timm

import attnzoo
from attnzoo import _registry


def test_importing_attnzoo_leaves_every_timm_name_as_it_was():
    script = textwrap.dedent("""
        import json, timm
        from timm.models import _registry as r
        def snapshot():
            return {
                name: [fn.__module__, fn.__qualname__, id(fn), repr(r._model_pretrained_cfgs.get(name))]
                for name, fn in r._model_entrypoints.items()
            }
        before = snapshot()
        pretrained_before = sorted(timm.list_pretrained())
        import attnzoo
        after = snapshot()
        changed = sorted(n for n in before if after.get(n) != before[n])
        added = sorted(set(after) - set(before))
        print(json.dumps(dict(changed=changed, added=added, n_before=len(before),
                              pretrained_kept=set(pretrained_before) <= set(timm.list_pretrained()),
                              attnzoo=attnzoo.list_models())))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n_before"] > 1000
    assert report["changed"] == []
    assert report["pretrained_kept"]
    assert report["added"] == sorted(report["attnzoo"])


def test_every_attnzoo_name_resolves_through_timm():
    names = attnzoo.list_models()
    assert {"nat_mini", "nat_tiny", "nat_small", "nat_base", "dinat_mini", "dinat_tiny", "dinat_small",
            "dinat_base", "dinat_large", "dinat_large_384", "dinat_large_11x11_384"} <= set(names)
    assert set(names) <= set(timm.list_models())
    assert not set(names) & _registry.timm_builtin_names()


def test_registering_a_timm_name_is_refused():
    with pytest.raises(ValueError, match="already a timm model"):
        _registry.register_family("x", "attnzoo.nat", lambda name, pretrained=False, **kw: None,
                                  {"resnet50": attnzoo.Published(25.6, 4.1, 80.4, 224, "test")})


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attnzoo model 'nat_huge'"):
        attnzoo.get_entry("nat_huge")


# The smallest model of each family (as timm's suite runs them in tests/timm_suite).
SMALLEST = ("nat_mini", "dinat_mini", "az_maxvit_rmlp_pico_rw_256", "az_maxvit_tiny_tf_224", "az_davit_tiny",
            "az_halonet26t", "az_shvit_s1", "biformer_tiny", "transnext_micro")


# One model per family for the heavier per-model tests (autocast, FX): SMALLEST without its second
# MaxViT (az_maxvit_tiny_tf_224, which timm's suite still runs).
ONE_PER_FAMILY = tuple(n for n in SMALLEST if n != "az_maxvit_tiny_tf_224")


def test_smallest_list_covers_every_family():
    assert {_registry.get_entry(n).family for n in SMALLEST} == set(_registry.families())
    families = [_registry.get_entry(n).family for n in ONE_PER_FAMILY]
    assert sorted(families) == sorted(_registry.families())


@pytest.mark.parametrize("name", SMALLEST)
def test_factory_device_and_dtype_reach_every_parameter_and_buffer(name):
    import torch

    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert tensors
    misplaced = [n for n, t in tensors.items() if t.device.type != "meta"]
    assert not misplaced, misplaced[:5]
    wrong_dtype = [n for n, t in tensors.items() if t.is_floating_point() and t.dtype != torch.bfloat16]
    assert not wrong_dtype, wrong_dtype[:5]
    # Index tables keep their integer type.
    assert all(t.dtype in (torch.bfloat16, torch.int64, torch.int32, torch.bool) for t in tensors.values())


def test_factory_arguments_build_the_same_model_as_the_default():
    import torch

    torch.manual_seed(0)
    ref = timm.create_model("az_shvit_s1")
    torch.manual_seed(0)
    built = timm.create_model("az_shvit_s1", device="cpu", dtype=torch.float64)
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    ref_sd = ref.state_dict()
    for k, v in built.state_dict().items():  # same seed: the same initial values, converted after construction
        assert v.dtype == (torch.float64 if ref_sd[k].is_floating_point() else ref_sd[k].dtype), k
        assert torch.equal(v.to(ref_sd[k].dtype), ref_sd[k]), k
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    assert built.eval()(x).dtype == torch.float64


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="bogus"), r"nat_mini: backend must be None or one of 'reference', 'triton', got 'bogus'"),
    (dict(backend=3), r"backend must be None or one of 'reference', 'triton', got 3"),
    (dict(dtype="bfloat16"), r"dtype must be a floating-point torch.dtype .* got 'bfloat16'"),
    (dict(device="no_such_device"), r"device must be a torch.device or a device string .* got 'no_such_device'"),
])
def test_bad_factory_arguments_fail_at_create_model(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("nat_mini", **kwargs)


def test_integer_dtype_is_refused():
    import torch

    with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype .* got torch.int64"):
        timm.create_model("nat_mini", device="meta", dtype=torch.int64)


def test_an_unknown_constructor_argument_is_still_a_type_error():
    with pytest.raises(TypeError):
        timm.create_model("nat_mini", device="meta", not_a_model_arg=1)


def test_list_models_family_is_case_insensitive():
    assert attnzoo.list_models("nat") == attnzoo.list_models("NAT") == attnzoo.list_models("Nat")
    assert attnzoo.list_models("nat") and all(n.startswith("nat_") for n in attnzoo.list_models("nat"))
    assert attnzoo.list_models("DINAT") == [n for n in attnzoo.list_models() if n.startswith("dinat_")]
    by_family = [n for f in _registry.families() for n in attnzoo.list_models(f.lower())]
    assert sorted(by_family) == sorted(attnzoo.list_models())


def test_unknown_family_raises_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown attnzoo family 'swin'; registered families: NAT, DiNAT, .*TransNeXt"):
        attnzoo.list_models("swin")


def test_published_figures_cite_a_source_the_reader_can_find():
    for name in attnzoo.list_models():
        source = _registry.get_entry(name).published.source
        assert source.strip(), name
        assert "FAMILIES.md" not in source, f"{name} cites {source!r}; cite the paper or upstream directly"
