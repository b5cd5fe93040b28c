"""README.md runs as written: every ``sh`` and ``python`` block in it is executed here, so README
cannot rot. Blocks of any other language (``text`` for printed output) are not run.

A block runs in a scratch folder that links every top-level entry of the checkout (so
``configs/...``, ``Makefile`` and ``.venv`` are where README says) and keeps what the block
writes (``data/``, ``runs/``, ``bench-results/``). ``sh`` blocks run in bash (``-e -o pipefail``)
with this environment's ``bin/`` first on PATH, as after ``source .venv/bin/activate``; ``python``
blocks run in this environment's interpreter. The Hub is offline (``HF_HUB_OFFLINE=1``).

How a block runs is said by an HTML comment on the line right above its opening fence (invisible
on GitHub): ``<!-- readme-test: ITEM; ITEM; ... -->``. Without one a block runs in CI as written.
Items:

* ``extended``: run only in the extended tier (``ATTNZOO_EXTENDED=1`` or ``pytest -m extended``);
* ``mm``: run only where MMDetection, MMSegmentation and mmcv with its ops are installed (with
  ``ATTNZOO_REQUIRE_MM=1``, as ``make test`` sets, their absence is a failure);
* ``make``: the block calls ``make``: run only in the environment ``make setup`` made, with its set-up
  up to date, so that ``make`` has nothing to install;
* ``skip=REASON``: not run, for blocks that need what a test cannot have (the network, your data,
  GPUs); the reason names the test that covers the same path. It comes last: the reason is the
  rest of the comment, semicolons included;
* ``env=NAME=VALUE``: an environment variable for the block (e.g. ``BENCH_ARGS`` for ``make bench``);
* ``replace=OLD=>NEW``: a textual substitution before running, the small-size switch (e.g.
  ``--epochs 6=>--epochs 1``); OLD must occur in the block;
* ``expect=TEXT``: the block's output must contain TEXT;
* ``id=NAME`` / ``after=NAME``: a block that uses what another one made runs it first (once per
  session);
* ``timeout=SECONDS``: the limit of the block (default 900).

Blocks added to README later are picked up automatically; a new expensive block must carry
``extended`` (CI's budget), one that needs OpenMMLab ``mm``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_LANGUAGES = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
_TAG = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
_FLAGS = ("extended", "mm", "make")
_KEYS = ("skip", "env", "replace", "expect", "id", "after", "timeout")


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str  # "sh" or "python"
    text: str
    flags: set = field(default_factory=set)
    skip: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    replace: List[Tuple[str, str]] = field(default_factory=list)
    expect: List[str] = field(default_factory=list)
    id: Optional[str] = None
    after: Optional[str] = None
    timeout: float = 900.0

    @property
    def name(self) -> str:
        return f"L{self.line}-{self.id or self.language}"

    def script(self) -> str:
        text = self.text
        for old, new in self.replace:
            if old not in text:
                raise ValueError(f"README line {self.line}: replace={old}=>{new}: {old!r} is not in the block")
            text = text.replace(old, new)
        return text


def _parse_tag(body: str, line: int) -> dict:
    spec = dict(flags=set(), env={}, replace=[], expect=[])
    body, has_skip, reason = body.partition("skip=")  # the reason is the rest of the comment
    if has_skip:
        if not reason.strip():
            raise ValueError(f"README line {line}: skip needs a reason")
        spec["skip"] = reason.strip()
    for item in filter(None, (i.strip() for i in body.split(";"))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            if key not in _FLAGS:
                raise ValueError(f"README line {line}: unknown readme-test flag {key!r} (flags: {', '.join(_FLAGS)})")
            spec["flags"].add(key)
        elif key == "env":
            name, eq2, val = value.partition("=")
            if not eq2:
                raise ValueError(f"README line {line}: env needs NAME=VALUE, got {value!r}")
            spec["env"][name.strip()] = val
        elif key == "replace":
            old, arrow, new = value.partition("=>")
            if not arrow:
                raise ValueError(f"README line {line}: replace needs OLD=>NEW, got {value!r}")
            spec["replace"].append((old, new))
        elif key == "expect":
            spec["expect"].append(value)
        elif key == "timeout":
            spec["timeout"] = float(value)
        elif key in ("id", "after"):
            if not value.strip():
                raise ValueError(f"README line {line}: {key} needs a value")
            spec[key] = value.strip()
        else:
            raise ValueError(f"README line {line}: unknown readme-test key {key!r} (keys: {', '.join(_KEYS)})")
    return spec


def parse_blocks(text: str) -> Tuple[List[Block], List[Tuple[int, str]]]:
    """(the runnable blocks, (line, language) of the fenced blocks that are not run)."""
    lines = text.splitlines()
    blocks, others = [], []
    i, pending = 0, None
    while i < len(lines):
        tag = _TAG.match(lines[i])
        if tag:
            pending = (i + 1, tag.group(1))
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip() and pending is not None:
                raise ValueError(f"README line {pending[0]}: a readme-test comment must sit right above a fence")
            i += 1
            continue
        ticks, language = fence.group(1), fence.group(2).lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(ticks) and not lines[j].strip("`")),
                   None)
        if end is None:
            raise ValueError(f"README line {i + 1}: a fenced block is never closed")
        body = "\n".join(lines[i + 1:end]) + "\n"
        if language in RUN_LANGUAGES:
            spec = _parse_tag(pending[1], pending[0]) if pending else {}
            blocks.append(Block(i + 1, RUN_LANGUAGES[language], body, **spec))
        else:
            if pending is not None:
                raise ValueError(f"README line {pending[0]}: a readme-test comment above a {language!r} block, "
                                 "which is not run")
            others.append((i + 1, language))
        pending = None
        i = end + 1
    ids = [b.id for b in blocks if b.id]
    if len(ids) != len(set(ids)):
        raise ValueError(f"README: duplicate readme-test ids {ids}")
    for b in blocks:
        if b.after and b.after not in ids:
            raise ValueError(f"README line {b.line}: after={b.after} names no block id")
    return blocks, others


BLOCKS, OTHERS = parse_blocks(README.read_text())
BY_ID = {b.id: b for b in BLOCKS if b.id}


def _extended_selected(config) -> bool:
    if os.environ.get("ATTNZOO_EXTENDED", "") == "1":
        return True
    markexpr = " ".join((config.getoption("markexpr", default="") or "").split())
    return re.search(r"(?<!not )\bextended\b", markexpr) is not None


def _mm_missing() -> Optional[str]:
    try:
        import mmcv.ops  # noqa: F401  (compiled ops: mmcv-lite is not enough)
        import mmdet.models  # noqa: F401
        import mmseg.models  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _make_setup_missing() -> Optional[str]:
    """None when this environment is `make setup`'s, up to date (make would install nothing)."""
    stamp = Path(sys.prefix) / ".attnzoo-installed"
    if not stamp.is_file():
        return f"this environment ({sys.prefix}) was not made by `make setup` (no {stamp.name})"
    newer = [p for p in (ROOT / "pyproject.toml", ROOT / ".ci" / "constraints.txt")
             if p.stat().st_mtime > stamp.stat().st_mtime]
    if newer:
        return f"`make setup` is out of date ({', '.join(p.name for p in newer)} changed): make would reinstall"
    return None


def _top_level_entries() -> List[str]:
    """The checkout's tracked top-level files and folders (not what earlier runs left: .venv,
    bench-results/, data/, ...); every entry but .git and .venv without git."""
    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip():
        return sorted({line.split("/")[0] for line in proc.stdout.splitlines()})
    return sorted(e.name for e in ROOT.iterdir() if e.name not in (".git", ".venv", "bench-results", "data", "runs"))


class Sandbox:
    """A scratch folder linking the checkout's top-level entries, and the blocks run in it."""

    def __init__(self, path: Path):
        self.path = path
        for name in _top_level_entries():
            (path / name).symlink_to(ROOT / name)
        (path / ".venv").symlink_to(Path(sys.prefix))  # README's .venv is the environment running the tests
        self.done: Dict[str, subprocess.CompletedProcess] = {}

    def env(self, block: Block) -> Dict[str, str]:
        env = dict(os.environ)
        # as in a fresh shell: no options of an enclosing `make test` (its command-line variables and
        # jobserver travel in MAKEFLAGS) and none of the variables README's make targets read
        for var in ("BENCH_ARGS", "PYTEST_ARGS", "PYTEST_WORKERS", "VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MFLAGS",
                    "MAKELEVEL", "MAKEOVERRIDES"):
            env.pop(var, None)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = sys.prefix
        env["HF_HUB_OFFLINE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        if os.environ.get("PYTEST_XDIST_WORKER"):
            env["OMP_NUM_THREADS"] = "1"  # one core per test worker, as the suite's own processes
        env.update(block.env)
        return env

    def run(self, block: Block) -> subprocess.CompletedProcess:
        if block.after and block.after not in self.done:
            self.run(BY_ID[block.after])
        script = block.script()
        if block.language == "sh":
            cmd = ["bash", "-e", "-o", "pipefail", "-c", script]
        else:
            path = self.path / f"readme_block_{block.line}.py"
            path.write_text(script)
            cmd = [sys.executable, str(path)]
        proc = subprocess.run(cmd, cwd=self.path, env=self.env(block), capture_output=True, text=True,
                              timeout=block.timeout, stdin=subprocess.DEVNULL)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, (f"README block at line {block.line} failed (exit {proc.returncode}):\n"
                                      f"{script}\n--- output (last 4000 characters) ---\n{output[-4000:]}")
        for text in block.expect:
            assert text in output, f"README block at line {block.line}: {text!r} not in its output:\n{output[-3000:]}"
        if block.id:
            self.done[block.id] = proc
        return proc


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("readme"))


def _marks(block: Block):
    return [pytest.mark.extended] if "extended" in block.flags else []


@pytest.mark.parametrize("block", [pytest.param(b, id=b.name, marks=_marks(b)) for b in BLOCKS])
def test_readme_block_runs_as_written(block: Block, sandbox: Sandbox, request):
    if block.skip:
        pytest.skip(f"README line {block.line}: {block.skip}")
    if block.after and "extended" in BY_ID[block.after].flags and not _extended_selected(request.config):
        pytest.skip(f"README line {block.line} needs block {block.after!r}, which is in the extended tier")
    if "mm" in block.flags or (block.after and "mm" in BY_ID[block.after].flags):
        missing = _mm_missing()
        if missing is not None:
            if os.environ.get("ATTNZOO_REQUIRE_MM") == "1":
                pytest.fail(f"README line {block.line} needs OpenMMLab, which make test installs: {missing}")
            pytest.skip(f"README line {block.line} needs OpenMMLab ({missing}); `make setup-mm` installs it")
    if "make" in block.flags:
        missing = _make_setup_missing()
        if missing is not None:
            pytest.skip(f"README line {block.line} calls make: {missing}")
    sandbox.run(block)


def test_readme_has_runnable_blocks_and_every_tag_parses():
    assert {b.language for b in BLOCKS} == {"sh", "python"}
    for block in BLOCKS:
        block.script()  # every replace= finds its text
    assert all(lang not in ("", "console") for _, lang in OTHERS), OTHERS  # a block says what it is


_TAG_EXAMPLE = """
text
<!-- readme-test: extended; env=A=b c; replace=x 1=>x 2; expect=ok; id=one -->
```sh
echo x 1
```

<!-- readme-test: after=one; skip=needs a GPU -->
```python
print(1)
```

```text
output
```
"""


def test_tags_parse_as_documented():
    blocks, others = parse_blocks(_TAG_EXAMPLE)
    first, second = blocks
    assert (first.flags, first.env, first.replace, first.expect, first.id) == (
        {"extended"}, {"A": "b c"}, [("x 1", "x 2")], ["ok"], "one")
    assert first.script() == "echo x 2\n"
    assert (second.language, second.after, second.skip) == ("python", "one", "needs a GPU")
    assert others == [(13, "text")]
    for bad in ("<!-- readme-test: extendd -->\n```sh\nx\n```\n", "<!-- readme-test: after=nobody -->\n```sh\nx\n```\n",
                "<!-- readme-test: mm -->\n\ntext between\n```sh\nx\n```\n", "<!-- readme-test: mm -->\n```text\nx\n```\n"):
        with pytest.raises(ValueError):
            parse_blocks(bad)


def test_install_commands_take_attnzoo_from_the_checkout():
    """attnzoo is on no package index: a command that installs it names the clone or a built
    wheel, never a registry name that would fetch someone else's package (README and
    CONTRIBUTING, every fenced block)."""
    offending, checkout = [], False
    for doc in (README, ROOT / "CONTRIBUTING.md"):
        in_block = False
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            if _FENCE.match(line):
                in_block = not in_block
                continue
            command = line.split("#")[0]
            if not in_block or "pip install" not in command:
                continue
            args = command.split("pip install", 1)[1].split()
            offending += [f"{doc.name}:{n}: {line.strip()}" for a in args
                          if re.fullmatch(r"['\"]?attnzoo(\[[^\]]*\])?['\"]?", a)]
            checkout |= "-e" in args and any(a.startswith(("'.[", '".[', ".[")) or a == "." for a in args)
    assert not offending, offending
    assert checkout, "README should show how to install an extra from the checkout (pip install -e '.[train]')"


def test_no_file_cites_documents_outside_the_repository():
    """The project carries its own documents: no tracked file points at design notes that are not in it."""
    names = ["DESIGN" + ".md", "FAMILIES" + ".md"]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offending = []
    for rel in tracked.stdout.splitlines():
        path = ROOT / rel
        if not path.is_file() or path.suffix in (".png", ".safetensors", ".pt", ".pth"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            # a test asserting that a name is absent is a guard, not a citation
            if any(name in line for name in names) and not (rel.startswith("tests/") and " not in " in line):
                offending.append(f"{rel}:{n}: {line.strip()}")
    assert not offending, "\n".join(offending)


def test_the_documents_a_project_needs_are_there():
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    notice = (ROOT / "NOTICE").read_text()
    for upstream in ("Neighborhood-Attention-Transformer", "pytorch-image-models", "BiFormer", "TransNeXt", "SHViT",
                     "davit", "maxvit"):
        assert upstream.lower() in notice.lower(), upstream
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for topic in ("make setup", "make test", "-m extended", "attnzoo env", "## Adding a family", "## Adding an op",
                  "readme-test"):
        assert topic in contributing, topic
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for topic in ("dispatch", "torch.library", "reference", "tests/"):
        assert topic in architecture, topic
    for target in re.findall(r"\]\(((?!https?:|#)[^)\s]+)\)", README.read_text()):
        assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"
