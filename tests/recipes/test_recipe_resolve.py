"""Finding recipes (packaged names, old spellings, own files) and the early recipe checks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from medrs_diff.errors import MedrsError, RecipeError
from medrs_diff.train.recipe import (
    check_recipe,
    check_recipe_args,
    config_paths,
    packaged_recipes,
    recipe_dir,
    resolve_config_args,
    resolve_recipe,
)

PKG = Path(__file__).resolve().parents[2] / "medrs_diff"


def test_packaged_recipes_live_inside_the_package():
    names = packaged_recipes()
    assert names == sorted(p.name for p in (PKG / "recipes").glob("*.yaml")) and names
    assert recipe_dir().resolve() == (PKG / "recipes").resolve()


@pytest.mark.parametrize("spelling", ["segdiff_phantom2d", "segdiff_phantom2d.yaml", "recipes/segdiff_phantom2d.yaml"])
def test_packaged_recipe_by_name(spelling, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the packaged one is found
    path = resolve_recipe(spelling)
    assert path.is_file() and path.resolve() == (PKG / "recipes" / "segdiff_phantom2d.yaml").resolve()


def test_existing_file_is_used_as_is(tmp_path, monkeypatch):
    own = tmp_path / "segdiff_phantom2d.yaml"  # same name as a packaged one: the user's file wins
    own.write_text("seed_everything: 1\n")
    assert resolve_recipe(own) == own
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("segdiff_phantom2d.yaml") == Path("segdiff_phantom2d.yaml")


def test_unknown_recipe_lists_the_packaged_ones(tmp_path):
    with pytest.raises(RecipeError, match=r"nope: recipe not found .*\. Fix: use one of the packaged recipes: "
                                          r".*segdiff_phantom2d\.yaml.*srdiff_synthetic\.yaml"):
        resolve_recipe("nope")
    with pytest.raises(RecipeError, match="recipe not found. Fix: check the path"):
        resolve_recipe(tmp_path / "missing" / "mine.yaml")
    with pytest.raises(RecipeError, match="is a folder"):
        resolve_recipe(tmp_path)
    assert issubclass(RecipeError, MedrsError) and issubclass(RecipeError, ValueError)


def test_config_args_are_resolved():
    argv = ["fit", "--config", "segdiff_phantom2d", "--trainer.max_steps", "2", "--config=srdiff_synthetic.yaml"]
    assert config_paths(argv) == ["segdiff_phantom2d", "srdiff_synthetic.yaml"]
    out = resolve_config_args(argv)
    assert out[:2] == ["fit", "--config"] and Path(out[2]).name == "segdiff_phantom2d.yaml" and Path(out[2]).is_file()
    assert out[3:5] == ["--trainer.max_steps", "2"]
    assert out[5].startswith("--config=") and Path(out[5].split("=", 1)[1]).is_file()
    check_recipe_args(argv)  # packaged names pass the early checks


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_method_names_the_valid_ones_without_importing(tmp_path):
    cfg = yaml.safe_load(resolve_recipe("segdiff_phantom2d").read_text())
    cfg["model"]["init_args"]["method"]["class_path"] = "evil_pkg_never_imported.Thing"
    path = _write(tmp_path, cfg)
    with pytest.raises(RecipeError, match=r"r\.yaml: unknown method 'evil_pkg_never_imported.Thing'; valid methods: "
                                          r"segdiff \(SegDiff, medrs_diff\.methods\..*SegDiff\).*SRDiff"):
        check_recipe_args(["fit", "--config", str(path)])
    assert "evil_pkg_never_imported" not in sys.modules
    for ok in ("SegDiff", "segdiff", "medrs_diff.methods.SegDiff", "medrs_diff.methods.segdiff.SegDiff"):
        cfg["model"]["init_args"]["method"]["class_path"] = ok
        check_recipe(_write(tmp_path, cfg))


def test_moved_data_module_path_names_its_short_name(tmp_path):
    cfg = yaml.safe_load(resolve_recipe("srdiff_synthetic").read_text())
    cfg["data"]["class_path"] = "medrs_diff.train.task_data.GeoTiffSRDataModule"
    with pytest.raises(RecipeError, match=r"has moved to medrs_diff\.datamodules\. Fix: write `class_path: "
                                          r"GeoTiffSRDataModule`"):
        check_recipe(_write(tmp_path, cfg))


def test_bad_yaml_is_reported(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml: is not valid YAML .*\. Fix: fix the YAML syntax"):
        check_recipe(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="holds a list, not a mapping"):
        check_recipe(path)
