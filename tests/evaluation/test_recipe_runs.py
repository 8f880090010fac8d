"""evaluation/recipe_runs.py: the real-data tables' training step keeps only ``last.ckpt`` and its ``seed``
reaches training (the HRF table's seed study relies on it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "evaluation" / "recipe_runs.py"
RECIPE = "smp_unet_fundus_phantom"


@pytest.fixture(scope="module")
def fit_recipe():
    spec = importlib.util.spec_from_file_location("recipe_runs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.fit_recipe


def _weights(ckpt: Path) -> torch.Tensor:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return torch.cat([v.flatten().float() for k, v in sorted(state.items()) if v.is_floating_point()])


def test_seeds_override_the_recipe_and_reach_training(fit_recipe, tmp_path: Path, one_thread,
                                                      restore_global_state) -> None:
    data = {"root": str(tmp_path / "phantoms")}  # the recipe's phantoms are written here, not under the cwd
    runs = {name: fit_recipe(RECIPE, tmp_path, name, steps=1, data=data, seed=seed)
            for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    # the data module's own seed differing from the task's once stopped every run at start (Lightning refused to
    # merge the two `seed` hyper-parameters for the logger)
    d = fit_recipe(RECIPE, tmp_path, "d", steps=1, data={**data, "seed": 5}, seed=3)
    assert torch.load(d, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]["seed"] == 5
    for name, ckpt in runs.items():
        assert ckpt.name == "last.ckpt" and [p.name for p in (tmp_path / name).rglob("*.ckpt")] == ["last.ckpt"]
    cfg = yaml.safe_load((tmp_path / "a.yaml").read_text())
    assert cfg["seed_everything"] == 3 and cfg["model"]["init_args"]["seed"] == 3
    a, b, c = (_weights(runs[n]) for n in "abc")
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # same seed: the same weights after a step
    assert not torch.equal(a, c)  # another seed: another initialisation
