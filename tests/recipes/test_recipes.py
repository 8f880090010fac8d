"""Every packaged recipe trains for two steps through ``medrs-diff fit``'s LightningCLI path, writes a
checkpoint that loads back, and its short class names resolve in a fresh process; an old checkpoint
(class paths of earlier releases) still loads.

Recipes are found by glob, so a new recipe in ``medrs_diff/recipes/`` is covered without editing this
file. Data roots go to ``tmp_path``; phantom counts, patches per epoch, batch sizes and sampling steps
are shrunk where the recipe has those keys. A recipe that reads ``../shared/data`` is pointed at the
shared folder and skips when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medrs_diff.train.checkpoint import (
    checkpoint_data_config,
    class_path_of,
    load_method_from_checkpoint,
    read_checkpoint,
    resolve_method_class,
)
from medrs_diff.train.recipe import packaged_recipes, recipe_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
RECIPES = sorted(recipe_dir().glob("*.yaml"))
STEPS = 2

#: Recipe keys shrunk for the smoke run (only where the recipe sets them): key -> value.
SMALL_DATA = {"phantoms": 4, "samples_per_epoch": 4, "batch_size": 2, "val_batch_size": 1}
SMALL_MODEL = {"val_steps": 2, "val_samples": 1, "warmup_steps": 1}
SMALL_METHOD = {"sampling_steps": 2, "pretrain_steps": 1}


def run_lightning(argv: list[str]) -> int:
    """``medrs-diff fit``'s LightningCLI entry point (the CLI's own when it exists, else built the same way)."""
    import importlib

    for where in ("medrs_diff.cli.lightning_cli", "medrs_diff.cli"):
        try:
            cli_run = getattr(importlib.import_module(where), "run_lightning", None)
        except ImportError:
            cli_run = None
        if cli_run is not None:
            return cli_run(argv)
    from lightning.pytorch.cli import LightningCLI

    import medrs_diff.datamodules  # noqa: F401 - the subclasses short data class names resolve among
    from medrs_diff.datamodules import DictDataModule
    from medrs_diff.train import DiffusionTask, RecipeConfigCallback
    from medrs_diff.train.recipe import check_recipe_args

    check_recipe_args(argv)
    LightningCLI(DiffusionTask, DictDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_callback=RecipeConfigCallback, save_config_kwargs={"overwrite": True}, args=argv,
                 auto_configure_optimizers=False)
    return 0


def _shared_path(value: str) -> Path | None:
    """The absolute shared-data path a recipe value like ``../shared/data/X`` names, else None."""
    marker = "shared/data/"
    if marker not in value:
        return None
    return SHARED_DATA / value.split(marker, 1)[1]


def smoke_args(recipe: Path, tmp: Path) -> list[str]:
    """LightningCLI arguments that run ``recipe`` for :data:`STEPS` steps on tiny data under ``tmp``."""
    cfg = yaml.safe_load(recipe.read_text()) or {}
    args = ["fit", "--config", str(recipe), "--trainer.default_root_dir", str(tmp / "run"),
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", str(STEPS),
            "--trainer.check_val_every_n_epoch", "null", "--trainer.limit_val_batches", "1",
            "--trainer.num_sanity_val_steps", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    data = ((cfg.get("data") or {}).get("init_args") or {})
    reads_shared = False
    for key, value in data.items():
        shared = _shared_path(value) if isinstance(value, str) else None
        if shared is not None:
            if not shared.exists():
                pytest.skip(f"{recipe.name} reads {shared}, which is absent")
            args += [f"--data.init_args.{key}", str(shared)]
            reads_shared = reads_shared or key == "root"
    if "root" in data and not reads_shared:
        args += ["--data.init_args.root", str(tmp / "data")]
    for group, small in (("data.init_args", SMALL_DATA), ("model.init_args", SMALL_MODEL)):
        given = data if group == "data.init_args" else ((cfg.get("model") or {}).get("init_args") or {})
        args += [a for k, v in small.items() if isinstance(given.get(k), int) and given[k] > v
                 for a in (f"--{group}.{k}", str(v))]
    method = (((cfg.get("model") or {}).get("init_args") or {}).get("method") or {}).get("init_args") or {}
    args += [a for k, v in SMALL_METHOD.items() if isinstance(method.get(k), int) and method[k] > v
             for a in (f"--model.init_args.method.init_args.{k}", str(v))]
    return args


def stage_one_recipe(recipe: Path) -> Path:
    """The packaged recipe that trains the checkpoint a latent recipe's ``autoencoder`` points at: the one whose
    ``trainer.default_root_dir`` holds that path (``runs/autoencoder_kl_phantom2d/.../last.ckpt``)."""
    path = str(_method_args(recipe)["autoencoder"])
    roots = {p: (_recipe(p).get("trainer") or {}).get("default_root_dir") for p in RECIPES if p != recipe}
    found = [p for p, root in roots.items() if isinstance(root, str) and path.startswith(root.rstrip("/") + "/")]
    assert len(found) == 1, f"{recipe.name}: no single packaged recipe writes its autoencoder {path} ({found})"
    return found[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """``fitted(recipe)`` -> the checkpoint of a two-step run of ``recipe`` (each recipe is run once).

    The packaged networks are full size (up to 400 MB a checkpoint with EMA and optimizer state): each run keeps only
    ``last.ckpt``, and the runs are deleted when the module ends, so the suite stays within a few GB of disk."""
    _RUNS: dict[str, Path] = {}
    dirs: list[Path] = []

    def run(recipe: Path) -> Path:
        if recipe.name not in _RUNS:
            tmp = tmp_path_factory.mktemp(recipe.stem)
            dirs.append(tmp)
            args = smoke_args(recipe, tmp)
            if isinstance(_method_args(recipe).get("autoencoder"), str):  # latent diffusion: stage 1 trains first
                ae = run(stage_one_recipe(recipe))
                args += ["--model.init_args.method.init_args.autoencoder", str(ae)]
            assert run_lightning(args) == 0
            ckpts = sorted((tmp / "run").rglob("*.ckpt"))
            assert ckpts, f"{recipe.name}: no checkpoint written"
            last = [p for p in ckpts if p.name == "last.ckpt"]
            _RUNS[recipe.name] = (last or ckpts)[0]
            for p in ckpts:
                if p != _RUNS[recipe.name]:
                    p.unlink()
        return _RUNS[recipe.name]

    yield run
    for tmp in dirs:
        shutil.rmtree(tmp, ignore_errors=True)


def _recipe(recipe: Path) -> dict[str, Any]:
    return yaml.safe_load(recipe.read_text())


def _method_args(recipe: Path) -> dict[str, Any]:
    return (((_recipe(recipe).get("model") or {}).get("init_args") or {}).get("method") or {}).get("init_args") or {}


def test_recipes_are_packaged():
    names = packaged_recipes()
    assert [p.name for p in RECIPES] == names
    for expected in ("segdiff_phantom2d.yaml", "segdiff_phantom3d.yaml", "srdiff_sentinel2.yaml",
                     "srdiff_synthetic.yaml"):
        assert expected in names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_two_steps_and_its_checkpoint_loads(recipe, fitted):
    cfg = _recipe(recipe)
    ckpt_path = fitted(recipe)
    ckpt = read_checkpoint(ckpt_path)
    assert ckpt["global_step"] == STEPS
    method_cp = cfg["model"]["init_args"]["method"]["class_path"]
    cls = resolve_method_class(method_cp)
    method = load_method_from_checkpoint(ckpt_path, expected=cls)
    assert type(method) is cls and not method.training
    # the stored method is the recipe's, its arguments included, under its current full class path
    assert ckpt["medrs_diff"]["method"]["class_path"] == class_path_of(cls)
    stored = ckpt["hyper_parameters"]["method"]["init_args"]
    for k, v in cfg["model"]["init_args"]["method"].get("init_args", {}).items():
        if k not in SMALL_METHOD and k != "autoencoder":  # the smoke run's own stage-1 checkpoint
            assert stored[k] == v, k
    # the data module named by its short class name is the one that ran, with the recipe's settings
    data_cfg = checkpoint_data_config(ckpt)
    assert data_cfg["class_path"].rsplit(".", 1)[-1] == cfg["data"]["class_path"].rsplit(".", 1)[-1]
    for k, v in cfg["data"]["init_args"].items():
        if k not in SMALL_DATA and k != "root" and not (isinstance(v, str) and "shared/data/" in v):
            assert data_cfg["init_args"][k] == v, k
    # the callbacks named by short class names ran (their states are in the checkpoint)
    for cb in cfg["trainer"].get("callbacks") or []:
        name = cb["class_path"].rsplit(".", 1)[-1]
        assert any(key.startswith(name) for key in ckpt["callbacks"]), (name, list(ckpt["callbacks"]))
    assert isinstance(ckpt.get("recipe"), str) and "max_steps: 2" in ckpt["recipe"]


def test_short_class_names_resolve_in_a_fresh_cli_process(tmp_path):
    """Only ``medrs_diff.cli`` imported: LightningCLI must still resolve every recipe's short names."""
    script = textwrap.dedent(
        """
        import contextlib, io, json, sys
        from medrs_diff.cli import main

        out = {}
        for path in sys.argv[1:]:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    main(["fit", "--config", path, "--print_config"])
                except SystemExit as err:
                    if err.code not in (0, None):
                        raise
            out[path] = buf.getvalue()
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *map(str, RECIPES)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    for recipe in RECIPES:
        cfg, full = _recipe(recipe), yaml.safe_load(printed[str(recipe)])
        assert full["model"]["class_path"].endswith(".DiffusionTask")
        method_cp = full["model"]["init_args"]["method"]["class_path"]
        assert "." in method_cp and method_cp.endswith("." + cfg["model"]["init_args"]["method"]["class_path"])
        assert full["data"]["class_path"].startswith("medrs_diff.datamodules.")
        assert full["data"]["class_path"].endswith("." + cfg["data"]["class_path"])
        given = [c["class_path"] for c in cfg["trainer"].get("callbacks") or []]
        resolved = [c["class_path"] for c in full["trainer"]["callbacks"]]
        assert len(given) == len(resolved)
        for short, path in zip(given, resolved, strict=True):
            assert "." in path and path.endswith("." + short)


def test_old_checkpoint_with_legacy_class_paths_still_loads(fitted, tmp_path):
    """A checkpoint written now, rewritten to the class paths of earlier releases, loads and reads alike."""
    recipe = recipe_dir() / "segdiff_phantom2d.yaml"
    ckpt_path = fitted(recipe)
    new = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    old = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    old["hyper_parameters"]["method"]["class_path"] = "medrs_diff.methods.segdiff.SegDiff"
    old["medrs_diff"]["method"]["class_path"] = "medrs_diff.methods.SegDiff"
    old["datamodule_hyper_parameters"]["_class_path"] = "medrs_diff.train.task_data.NiftiSegmentationDataModule"
    legacy = tmp_path / "legacy.ckpt"
    torch.save(old, legacy)

    from medrs_diff.datamodules import NiftiSegmentationDataModule
    from medrs_diff.methods import SegDiff

    a = load_method_from_checkpoint(ckpt_path)
    b = load_method_from_checkpoint(legacy, expected="segdiff")
    assert type(b) is SegDiff
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    # data-module settings read from the old checkpoint name the new class, with the same arguments
    data = checkpoint_data_config(read_checkpoint(legacy))
    assert data["class_path"] == class_path_of(NiftiSegmentationDataModule)
    assert data["init_args"]["scaling"] == "zscore" and data["init_args"]["spatial_dims"] == 2
    assert data["init_args"] == checkpoint_data_config(new)["init_args"]
    dm = NiftiSegmentationDataModule(**data["init_args"])
    assert dm.root == Path(new["datamodule_hyper_parameters"]["root"]) and len(dm.records()) >= 2
    # the raw legacy paths are really in the file, and read_checkpoint upgrades them in memory
    raw = torch.load(legacy, map_location="cpu", weights_only=True)
    assert raw["datamodule_hyper_parameters"]["_class_path"].startswith("medrs_diff.train.task_data.")
    assert read_checkpoint(legacy)["medrs_diff"]["method"]["class_path"] == class_path_of(SegDiff)


def test_old_checkpoint_rebuilds_the_task_through_lightning(fitted, tmp_path):
    """``DiffusionTask.load_from_checkpoint`` (Lightning's own loader) on legacy method class paths."""
    from medrs_diff.methods import SegDiff
    from medrs_diff.train import DiffusionTask

    new = torch.load(fitted(recipe_dir() / "segdiff_phantom2d.yaml"), map_location="cpu", weights_only=True)
    old = dict(new)
    old["hyper_parameters"] = {**new["hyper_parameters"], "method": {
        **new["hyper_parameters"]["method"], "class_path": "medrs_diff.methods.segdiff.SegDiff"}}
    old["medrs_diff"] = {**new["medrs_diff"], "method": {
        **new["medrs_diff"]["method"], "class_path": "medrs_diff.methods.SegDiff"}}
    legacy = tmp_path / "legacy.ckpt"
    torch.save(old, legacy)
    task = DiffusionTask.load_from_checkpoint(legacy, map_location="cpu")
    assert isinstance(task.method, SegDiff)
    for k, v in task.method.state_dict().items():
        assert torch.equal(v, new["state_dict"]["method." + k]), k
