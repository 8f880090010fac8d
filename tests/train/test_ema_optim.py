"""EMA against a hand-computed average (with warm-up), swapping for evaluation, and the LR schedule."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from train_toy import BlobDataset, ToyMethod, trainer

from medrs_diff.train import EMA, CheckpointError, DictDataModule, DiffusionTask, WarmupCosine, ema_state_dict
from medrs_diff.train.optim import param_groups


class Recorder(L.Callback):
    """Method state at fit start and after every optimizer step."""

    def __init__(self):
        self.states = []

    def _grab(self, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.method.state_dict().items()})

    def on_fit_start(self, trainer, pl_module):
        self._grab(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._grab(pl_module)


@pytest.mark.parametrize("every", [1, 2])
def test_ema_matches_hand_computed_average_with_warmup(tmp_path, every):
    L.seed_everything(0)
    rec, ema = Recorder(), EMA(decay=0.5, every_n_steps=every)
    task = DiffusionTask(ToyMethod(channels=4), lr=1e-2, warmup_steps=0)
    trainer(tmp_path, max_steps=5, callbacks=[rec, ema]).fit(task, DictDataModule(BlobDataset(10), batch_size=2))
    expected = {k: v.clone() for k, v in rec.states[0].items()}
    n = 0
    for step, state in enumerate(rec.states[1:], start=1):
        if step % every:
            continue
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.1818..., 0.25, 0.3077..., 0.5 cap not reached in 5 steps
        for k, v in state.items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        n += 1
    assert ema.num_updates == n == 5 // every
    assert set(ema.shadow) == set(expected)
    for k in expected:
        torch.testing.assert_close(ema.shadow[k], expected[k], rtol=1e-6, atol=1e-7)
    # the integer step counter is copied, not averaged
    assert int(ema.shadow["steps_done"]) == (5 if every == 1 else 4)
    # the EMA differs from the final training weights (it is an average, not a copy)
    assert not torch.allclose(ema.shadow["net.conv1.weight"], rec.states[-1]["net.conv1.weight"])


def test_ema_warmup_formula_and_cap():
    ema = EMA(decay=0.9999)
    assert [ema.decay_at(n) for n in (0, 1, 10)] == pytest.approx([0.1, 2 / 11, 11 / 20])
    assert ema.decay_at(10**7) == 0.9999
    assert EMA(decay=0.9, warmup=False).decay_at(0) == 0.9
    with pytest.raises(ValueError, match="decay must lie in"):
        EMA(decay=1.0)


def test_ema_weights_are_swapped_in_for_validation_and_back_after(tmp_path):
    seen = []

    class Spy(ToyMethod):
        def validation_metrics(self, batch, out):
            seen.append({k: v.detach().clone() for k, v in self.state_dict().items()})
            return {"zero": torch.zeros(())}

    L.seed_everything(0)
    rec, ema = Recorder(), EMA(decay=0.9)
    task = DiffusionTask(Spy(channels=4), lr=1e-2, warmup_steps=0, val_steps=2)
    # 4 training batches per epoch, validation after the last one (step 4), 2 validation batches
    t = trainer(tmp_path, max_steps=4, callbacks=[rec, ema])
    t.fit(task, DictDataModule(BlobDataset(8), val=BlobDataset(4), batch_size=2))
    assert len(seen) == 2
    for state in seen:
        for k, v in state.items():
            torch.testing.assert_close(v, ema.shadow[k].to(v.dtype))
    final = rec.states[-1]
    for k, v in task.method.state_dict().items():
        assert torch.equal(v, final[k]), k  # training weights are back after validation
    assert not torch.equal(final["net.conv1.weight"], ema.shadow["net.conv1.weight"])


def test_checkpoint_written_while_swapped_holds_training_weights(tmp_path):
    L.seed_everything(0)
    ema = EMA(decay=0.9)
    task = DiffusionTask(ToyMethod(channels=4), lr=1e-2, warmup_steps=0)
    t = trainer(tmp_path, max_steps=3, callbacks=[ema])
    t.fit(task, DictDataModule(BlobDataset(6), batch_size=2))
    train_w = task.method.net.conv1.weight.detach().clone()
    assert ema.swap_in(task)
    assert torch.equal(task.method.net.conv1.weight, ema.shadow["net.conv1.weight"])
    t.save_checkpoint(tmp_path / "swapped.ckpt")
    ema.swap_out(task)
    assert torch.equal(task.method.net.conv1.weight, train_w)
    ckpt = torch.load(tmp_path / "swapped.ckpt", weights_only=True)
    assert torch.equal(ckpt["state_dict"]["method.net.conv1.weight"], train_w)
    assert torch.equal(ema_state_dict(ckpt)["net.conv1.weight"], ema.shadow["net.conv1.weight"])
    assert torch.equal(ema_state_dict(tmp_path / "swapped.ckpt")["net.conv1.weight"], ema.shadow["net.conv1.weight"])
    del ckpt["callbacks"]
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        ema_state_dict(ckpt)


def test_warmup_cosine_values():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert WarmupCosine(0, None)(1000) == 1.0
    with pytest.raises(ValueError):
        WarmupCosine(-1, 10)


def test_param_groups_skip_biases_and_frozen():
    m = ToyMethod(channels=4)
    m.net.conv2.requires_grad_(False)
    groups = param_groups(m, 0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert [len(g["params"]) for g in groups] == [1, 1]  # conv1.weight decays, conv1.bias does not
    assert groups[0]["params"][0] is m.net.conv1.weight
