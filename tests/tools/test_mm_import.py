"""``import attnzoo.mm`` without (part of) OpenMMLab: the error names what is missing and the
command that installs it. Runs without OpenMMLab: missing packages are refused by an import hook
and installed ones are stood in for by empty modules, in one subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_MM_CASES = {  # case: (packages that fail to import, stand-ins for installed packages, what the message says)
    "no-extra": ("mmengine,mmcv,mmdet,mmseg", "", ["mmengine does not import", "pip install -e '.[mm]'",
                                                   "attnzoo install-mmcv"]),
    "no-mmcv": ("mmcv", "mmengine,mmdet,mmseg", ["need mmcv, which does not import", "attnzoo install-mmcv"]),
    "mmcv-without-ops": ("mmcv.ops", "mmengine,mmcv,mmdet,mmseg", ["compiled ops do not load", "attnzoo install-mmcv"]),
    "no-mmdet-mmseg": ("mmdet,mmseg", "mmengine,mmcv,mmcv.ops", ["needs mmdet or mmseg and neither imports",
                                                                 "pip install -e '.[mm]'"]),
}

# One process for every case: a finder that refuses the "missing" packages, empty modules standing
# in for the "installed" ones, then `import attnzoo.mm` and the message it raises.
_MM_PROBE = textwrap.dedent("""
    import importlib.abc, json, sys, types
    import attnzoo
    cases = json.loads(sys.argv[1])
    class Block(importlib.abc.MetaPathFinder):
        blocked = ()
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in self.blocked):
                raise ImportError(f"No module named {name!r}")
            return None
    block = Block()
    sys.meta_path.insert(0, block)
    messages = {}
    for case, (blocked, fakes) in cases.items():
        block.blocked = tuple(b for b in blocked.split(",") if b)
        for name in list(sys.modules):
            if name.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg") or name == "attnzoo.mm":
                del sys.modules[name]
        for name in filter(None, fakes.split(",")):
            for part in (name, name + ".model", name + ".registry"):
                sys.modules[part] = types.ModuleType(part)
        try:
            import attnzoo.mm
            messages[case] = None
        except ImportError as e:
            messages[case] = str(e)
    print(json.dumps(messages))
""")


def test_attnzoo_mm_names_what_is_missing_and_how_to_install_it():
    cases = {case: (blocked, fakes) for case, (blocked, fakes, _) in _MM_CASES.items()}
    proc = subprocess.run([sys.executable, "-c", _MM_PROBE, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, (_, _, expected) in _MM_CASES.items():
        message = messages[case]
        assert message is not None and message.startswith("attnzoo.mm"), (case, message)
        for part in expected:
            assert part in message, (case, message)
        assert "pip install 'attnzoo" not in message  # never a registry name: attnzoo installs from the checkout
