"""Nothing silent around checkpoints (issue 11): non-finite weights refused at load and at save, a
non-finite loss stops training naming the step and the cases, unreadable files give one line, temporary
files of a killed run are cleaned, changed optimizer settings on resume are applied and said."""

from __future__ import annotations

import os
import pickle
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from train_toy import BlobDataset, ToyMethod, trainer

from medrs_diff.datamodules import DictDataModule
from medrs_diff.train import (
    EMA,
    AtomicCheckpointIO,
    CheckpointError,
    DiffusionTask,
    load_method_from_checkpoint,
    read_checkpoint,
)
from medrs_diff.train.checkpoint import atomic_torch_save, clean_stale_temporaries
from medrs_diff.train.task import TrainingError


class CaseBlobs(BlobDataset):
    """Blobs with a ``case`` name per item; the items listed in ``nan_items`` have a NaN target pixel."""

    def __init__(self, n: int = 12, nan_items: tuple[int, ...] = ()) -> None:
        super().__init__(n)
        for i in nan_items:
            self.image[i, 0, 3, 3] = float("nan")

    def __getitem__(self, i):
        return {**super().__getitem__(i), "case": f"case_{i:02d}.nii.gz"}


def _fit(root, max_steps, ckpt_path=None, save_every=None, data=None, **task_kw):
    L.seed_everything(0)
    opts = {"lr": 3e-3, "warmup_steps": 2, "val_steps": 2, "seed": 1, **task_kw}
    task = DiffusionTask(ToyMethod(channels=4, dropout=0.0), **opts)
    dm = DictDataModule(data if data is not None else CaseBlobs(12), batch_size=4, seed=3)
    callbacks = [EMA(decay=0.9)]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_every,
                                         save_top_k=-1, save_last=True))
    t = trainer(root, max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(save_every),
                limit_val_batches=0)
    t.fit(task, dm, ckpt_path=ckpt_path)
    return task, t


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    _fit(root, 2, save_every=2)
    return root / "last.ckpt"


# -- row 5: non-finite weights are refused at load ------------------------------------------------------
@pytest.mark.parametrize("where", ["model", "ema"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_nonfinite_weights_is_refused_at_load(good_ckpt, tmp_path, where, value):
    ckpt = read_checkpoint(good_ckpt)
    if where == "model":
        ckpt["state_dict"]["method.net.conv1.weight"][0, 0, 0, 0] = value
        name = "method.net.conv1.weight"
    else:
        (ema,) = [s for s in ckpt["callbacks"].values() if isinstance(s, dict) and s.get("shadow")]
        ema["shadow"]["net.conv2.bias"][0] = value
        name = "EMA net.conv2.bias"
    bad = tmp_path / "diverged.ckpt"
    torch.save(ckpt, bad)
    kind = "1 NaN, 0 inf" if value != value else "0 NaN, 1 inf"
    pattern = rf"diverged.ckpt: holds non-finite weights \(NaN / inf\) in 1 tensor\(s\): {name}[^;]*\({kind} of"
    for ema_choice in (None, False):  # refused whichever weights are asked for
        with pytest.raises(CheckpointError, match=pattern):
            load_method_from_checkpoint(bad, ema=ema_choice)
    with pytest.raises(CheckpointError, match=pattern):  # and as a resume
        _fit(tmp_path / "resume", 4, ckpt_path=bad)
    with pytest.raises(CheckpointError, match="holds non-finite weights"):
        DiffusionTask.load_from_checkpoint(bad)
    from medrs_diff.inference import Predictor

    with pytest.raises(CheckpointError, match=pattern):  # and by `infer`, before any window runs
        Predictor.from_checkpoint(bad)


def test_resume_from_a_checkpoint_whose_class_path_is_no_method_lists_the_methods(good_ckpt, tmp_path):
    ckpt = read_checkpoint(good_ckpt)
    ckpt["medrs_diff"]["method"]["class_path"] = "os.system"
    task = DiffusionTask(ToyMethod(channels=4, dropout=0.0))
    with pytest.raises(CheckpointError, match=r"x.ckpt: .*os\.system.*segdiff") as err:
        task.check_checkpoint(ckpt, tmp_path / "x.ckpt")
    assert "Fix:" in str(err.value)


# -- row 7: a non-finite loss stops training; no checkpoint with non-finite weights is written -----------
def test_nonfinite_loss_stops_training_with_step_and_case_names(tmp_path):
    # shuffled order with seed 3: find the step whose batch holds item 5 by tracing a clean run first
    clean, _ = _fit(tmp_path / "clean", 3)
    order = clean.method.seen
    step_of_5 = order.index(5) // 4
    with pytest.raises(TrainingError) as err:
        _fit(tmp_path / "nan", 3, save_every=1, data=CaseBlobs(12, nan_items=(5,)))
    msg = str(err.value)
    assert msg.startswith(f"training step {step_of_5}: the loss is nan on the batch of case(s) ")
    assert "case_05.nii.gz" in msg and ". Fix: check those cases" in msg
    batch_cases = {f"case_{i:02d}.nii.gz" for i in order[4 * step_of_5: 4 * step_of_5 + 4]}
    assert all(c in msg for c in batch_cases)
    # every checkpoint written before the stop is finite and none is from the failing step
    written = sorted(p.name for p in (tmp_path / "nan").glob("*.ckpt"))
    assert f"step={step_of_5 + 1}.ckpt" not in written
    for name in written:
        load_method_from_checkpoint(tmp_path / "nan" / name)  # would raise on NaN weights


def test_checkpoint_with_nonfinite_weights_is_never_written(tmp_path):
    task, t = _fit(tmp_path, 1)
    with torch.no_grad():
        task.method.net.conv2.weight[0, 0, 1, 1] = float("inf")
    target = tmp_path / "diverged.ckpt"
    with pytest.raises(CheckpointError, match=r"checkpoint at global step 1: refused to write it: the weights hold "
                                              r"NaN / inf in 1 tensor\(s\) \(method.net.conv2.weight \(0 NaN, 1 inf"):
        t.save_checkpoint(target)
    with pytest.raises(CheckpointError, match="refused to write it"):
        t.save_checkpoint(target, weights_only=True)
    # the checkpoint IO refuses too, naming the file (for checkpoints written without the task's hooks)
    with pytest.raises(CheckpointError, match=r"diverged.ckpt: refused to write it: .*method.net.conv2.weight"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": task.state_dict()}, target)
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


# -- tracebacks -> one line: unreadable checkpoint files --------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo never run",))


def _write_bad(kind: str, path, good_bytes: bytes) -> None:
    if kind == "truncated":
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif kind == "random":
        path.write_bytes(bytes(range(7, 256)) * 16)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    elif kind == "torch-pickle":
        torch.save({"state_dict": {"w": _Payload()}}, path)


BAD_FILES = {
    "truncated": r"is not a readable PyTorch checkpoint, probably truncated or corrupted",
    "random": r"is not a PyTorch checkpoint \(its first bytes .* are neither a torch.save archive nor a pickle\)",
    "empty": r"is empty \(0 bytes\), probably left by an interrupted write",
    "pickle": r"holds a Python object \((posix|os|nt).system\) that is not a tensor or plain data: loading it would "
              r"run code, so it is refused",
    "torch-pickle": r"holds a Python object \(.*\) that is not a tensor or plain data",
    "missing": r"checkpoint file not found",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_unreadable_checkpoint_gives_one_line(good_ckpt, tmp_path, kind):
    bad = tmp_path / f"{kind}.ckpt"
    if kind != "missing":
        _write_bad(kind, bad, good_ckpt.read_bytes())
    pattern = rf"{kind}.ckpt: {BAD_FILES[kind]}.*\. Fix: "
    with pytest.raises(CheckpointError, match=pattern) as err:
        read_checkpoint(bad)
    assert "\n" not in str(err.value)
    if kind == "random":
        assert "trusted" not in str(err.value)  # an unknown file is never to be trusted
    with pytest.raises(CheckpointError, match=pattern):  # Trainer.fit(ckpt_path=...) says the same
        _fit(tmp_path / "run", 3, ckpt_path=bad)


# -- faults: temporary files -------------------------------------------------------------------------------
def test_atomic_writer_leaves_no_temporary_file_on_failure(tmp_path, monkeypatch):
    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 part")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"a": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_checkpoints_are_cleaned_and_never_chosen(good_ckpt, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(good_ckpt.read_bytes())
    stale = run / ".tmp-0badc0de-last.ckpt"  # what a killed write leaves (zero bytes)
    stale.write_bytes(b"")
    fresh = run / ".tmp-00c0ffee-step=9.ckpt"  # a write in progress (just touched): kept
    fresh.write_bytes(b"PK")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(run / "last.ckpt", (old - 10, old - 10))  # older than the temporary: mtime alone would choose it
    # Lightning's ckpt_path="last" picks the last checkpoint, never the newer temporary one
    task, t = _fit(run, 3, ckpt_path="last", save_every=100)
    assert t.global_step == 3 and t.ckpt_path == str(run / "last.ckpt")
    assert not stale.exists() and fresh.exists()  # cleaned at fit start; the live one kept
    assert clean_stale_temporaries(run, min_age_s=0.0) == [fresh] and not fresh.exists()
    assert clean_stale_temporaries(tmp_path / "nowhere") == []


# -- row 6 (API side): changed optimizer settings on resume are applied and said ---------------------------
def test_changed_optimizer_settings_on_resume_are_applied_and_reported(tmp_path):
    _fit(tmp_path / "a", 3, save_every=3, lr=2e-3, weight_decay=0.0, max_steps_for_schedule=10)
    ckpt = tmp_path / "a" / "step=3.ckpt"
    # unchanged settings: the restored optimizer state is used as it is, without a word
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        same, t_same = _fit(tmp_path / "b", 4, ckpt_path=ckpt, lr=2e-3, weight_decay=0.0, max_steps_for_schedule=10)
    assert not [w for w in seen if "differ from the checkpoint" in str(w.message)]
    with pytest.warns(UserWarning) as record:
        task, t = _fit(tmp_path / "c", 4, ckpt_path=ckpt, lr=0.5, weight_decay=0.1, val_steps=3,
                       max_steps_for_schedule=20)
    messages = [str(w.message) for w in record]
    assert any("step=3.ckpt: this run's settings differ from the checkpoint's and are used as given now" in m
               and "lr: 0.002 -> 0.5" in m and "weight_decay: 0.0 -> 0.1" in m and "val_steps: 2 -> 3" in m
               for m in messages), messages
    applied = [m for m in messages if "resumed with optimizer settings that differ" in m]
    assert applied and "lr 0.002 -> 0.5" in applied[0] and "weight_decay 0 -> 0.1" in applied[0]
    assert "schedule horizon (steps) 10 -> 20" in applied[0]
    opt, sched = t.optimizers[0], t.lr_scheduler_configs[0].scheduler
    # after step 4 the schedule runs on the new base lr and horizon
    assert sched.base_lrs == [0.5, 0.5]
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert sched.lr_lambdas[0].total_steps == 20
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * sched.lr_lambdas[0](sched.last_epoch))
    assert same.lr == 2e-3 and t_same.lr_scheduler_configs[0].scheduler.base_lrs == [2e-3, 2e-3]
    # the resumed run's own checkpoint records the settings it trained with
    t.save_checkpoint(tmp_path / "c" / "after.ckpt")
    stored = read_checkpoint(tmp_path / "c" / "after.ckpt")
    assert stored["hyper_parameters"]["lr"] == 0.5
    assert stored["lr_schedulers"][0]["base_lrs"] == [0.5, 0.5]
