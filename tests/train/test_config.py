"""``--recipe`` files load, name their sources and cover registered models; defaults layer as
built-in < recipe < --config YAML < command line."""
from __future__ import annotations

import pytest
import timm

import attnzoo  # noqa: F401
from attnzoo.train.config import TrainInputError, list_recipes, load_recipe, parse_with_defaults
from attnzoo.train.trainer import build_parser


def test_every_recipe_loads_and_names_its_sources():
    names = list_recipes()
    assert {"nat", "dinat", "maxvit", "biformer", "davit", "transnext", "shvit"} <= set(names)
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    for name in names:
        recipe = load_recipe(name)
        assert recipe["source"] and all(isinstance(s, str) and len(s) > 40 for s in recipe["source"]), name
        assert set(recipe["train"]) <= dests, (name, set(recipe["train"]) - dests)
        for model in recipe["variants"]:
            assert timm.is_model(model), (name, model)
            args = parse_with_defaults(build_parser(), ["--recipe", name, "--model", model])
            for key, value in recipe["train"].items():
                if key not in (recipe["variants"][model] or {}):
                    got = getattr(args, key)
                    assert (list(got) if isinstance(got, tuple) else got) == value, (name, model, key)
            for key, value in (recipe["variants"][model] or {}).items():
                assert getattr(args, key) == value, (name, model, key)


def test_layering_recipe_config_command_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("recipe: nat\nmodel: nat_small\nweight-decay: 0.01\nepochs: 5\n")
    args = parse_with_defaults(build_parser(), ["--config", str(cfg), "--epochs", "7"])
    assert args.model == "nat_small"
    assert args.drop_path == 0.3          # the recipe's nat_small
    assert args.warmup_epochs == 20       # the recipe's family setting
    assert args.weight_decay == 0.01      # --config over the recipe
    assert args.epochs == 7               # the command line over --config
    assert args.seed == 42                # built-in default


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_sise: 3\n")
    with pytest.raises(TrainInputError, match=r"unknown keys \['batch_sise'\]"):
        parse_with_defaults(build_parser(), ["--config", str(bad)])
    with pytest.raises(TrainInputError, match="--config: .* is not a file"):
        parse_with_defaults(build_parser(), ["--config", str(tmp_path / "missing.yaml")])
