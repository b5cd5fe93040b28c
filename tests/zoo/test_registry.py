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
