"""docs/models.md is what ``attnzoo models --write docs/models.md`` gives now: the page cannot
drift from the registry.

CI re-renders the whole page from the registry (names, families, published figures and their
sources, weights, licenses) and re-measures the parameters and GFLOPs of the smallest model of
each family, taking the other models' measured figures from the page; the extended tier
re-measures every model (about a minute on a CPU: 59 models built on the meta device)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from attnzoo.tools import models
from attnzoo.tools.bench import default_models

PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"
HINT = "docs/models.md differs from the registry: regenerate it with `attnzoo models --write docs/models.md`"


def test_the_page_matches_the_registry_and_the_smallest_models():
    page = PAGE.read_text()
    known = models.measured_figures(page)
    for name in default_models():  # measured again: a change to a family's layers shows here
        known.pop(name)
    rendered = models.render_markdown(models.model_rows(known=known))
    assert rendered == page, HINT


@pytest.mark.extended
def test_the_page_matches_every_model_measured_again():
    assert models.render_markdown(models.model_rows()) == PAGE.read_text(), HINT


def test_check_reports_a_stale_page(tmp_path, capsys):
    stale = tmp_path / "models.md"
    stale.write_text(PAGE.read_text().replace("| `az_shvit_s1` ", "| `az_shvit_s0` "))
    parser = argparse.ArgumentParser()
    models.add_arguments(parser)
    assert models.run(parser.parse_args(["--family", "SHViT", "--check", str(stale)])) == 1
    out, err = capsys.readouterr()
    assert "-| `az_shvit_s0` " in out and "+| `az_shvit_s1` " in out and "attnzoo models --write" in err
    assert models.run(parser.parse_args(["--family", "SHViT", "--write", str(stale)])) == 0
    assert models.run(parser.parse_args(["--family", "SHViT", "--check", str(stale)])) == 0
    assert models.run(parser.parse_args(["--family", "Swin"])) == 2
