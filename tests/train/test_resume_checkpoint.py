"""Resume exactness, atomic checkpoint writes, rebuilding methods from checkpoints and clear errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from train_toy import BlobDataset, OtherToyMethod, ToyMethod, trainer

from medrs_diff.datamodules import DictDataModule, ResumableDataLoader
from medrs_diff.train import (
    EMA,
    AtomicCheckpointIO,
    CheckpointError,
    DiffusionTask,
    load_method_from_checkpoint,
    read_checkpoint,
)

N = 10  # 24 samples / batch 4 = 6 batches per epoch: the checkpoint at step 5 is mid-epoch, step 10 in epoch 2


def _run(root, max_steps, ckpt_path=None, save_every=None, method_cls=ToyMethod):
    L.seed_everything(0)
    method = method_cls(channels=8, dropout=0.2)
    task = DiffusionTask(method, lr=3e-3, warmup_steps=3, val_steps=3, seed=1)
    dm = DictDataModule(BlobDataset(24), val=BlobDataset(4, seed=1), batch_size=4, seed=7)
    ema = EMA(decay=0.95)
    callbacks = [ema]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=save_every,
                                         save_top_k=-1, save_last=True))
    t = trainer(root, max_steps=max_steps, callbacks=callbacks, deterministic=True, limit_val_batches=1,
                enable_checkpointing=bool(save_every))
    t.fit(task, dm, ckpt_path=ckpt_path)
    return task, ema, t


def test_resume_continues_exactly(tmp_path):
    straight, ema_a, _ = _run(tmp_path / "a", N, save_every=N // 2)
    ckpt = tmp_path / "a" / f"step={N // 2}.ckpt"
    assert ckpt.is_file()
    resumed, ema_b, t = _run(tmp_path / "b", N, ckpt_path=ckpt)
    assert t.global_step == N
    # the data order continued mid-epoch and across the epoch boundary (reshuffled epoch 2)
    assert resumed.method.seen == straight.method.seen[len(straight.method.seen) - len(resumed.method.seen):]
    assert len(resumed.method.seen) == 4 * (N - N // 2)
    sa, sb = straight.method.state_dict(), resumed.method.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert ema_a.num_updates == ema_b.num_updates == N
    for k in ema_a.shadow:
        assert torch.equal(ema_a.shadow[k], ema_b.shadow[k]), k
    # and the run actually trained (weights moved away from the initial ones)
    L.seed_everything(0)
    init = ToyMethod(channels=8, dropout=0.2).state_dict()
    assert not torch.equal(init["net.conv1.weight"], sa["net.conv1.weight"])


def test_checkpoint_holds_full_state(tmp_path):
    _run(tmp_path, 3, save_every=3)
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert ckpt["optimizer_states"] and ckpt["optimizer_states"][0]["state"]
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 3
    assert ckpt["lr_schedulers"][0]["lr_lambdas"][0]["warmup_steps"] == 3
    assert ckpt["medrs_diff"]["method"] == {
        "class_path": "train_toy.ToyMethod", "init_args": {"channels": 8, "timesteps": 50, "dropout": 0.2}}
    assert ckpt["medrs_diff"]["method_name"] == "toy"
    (rng,) = ckpt["rng_states"]
    assert set(rng["global"]) == {"python", "numpy", "torch", "cuda"} and rng["train_generator"] is not None
    assert any(s.get("shadow") for s in ckpt["callbacks"].values() if isinstance(s, dict))
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 3}]


def test_load_method_uses_ema_weights_by_default(tmp_path):
    task, ema, _ = _run(tmp_path, 3, save_every=3)
    path = tmp_path / "last.ckpt"
    m = load_method_from_checkpoint(path)
    assert isinstance(m, ToyMethod) and not m.training
    assert torch.equal(m.net.conv1.weight, ema.shadow["net.conv1.weight"])
    raw = load_method_from_checkpoint(path, ema=False, expected=ToyMethod)
    assert torch.equal(raw.net.conv1.weight, task.method.net.conv1.weight)
    assert not torch.equal(raw.net.conv1.weight, m.net.conv1.weight)
    # plain Lightning loading rebuilds the task (and its method) from the stored hyper-parameters
    again = DiffusionTask.load_from_checkpoint(path)
    assert isinstance(again.method, ToyMethod) and again.val_steps == 3
    assert torch.equal(again.method.net.conv1.weight, task.method.net.conv1.weight)


def test_interrupted_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _, _, t = _run(tmp_path, 2, save_every=1)
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)
    last = tmp_path / "last.ckpt"
    before = last.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # partial bytes, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        t.save_checkpoint(last)
    monkeypatch.setattr(torch, "save", real_save)
    assert last.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert read_checkpoint(last)["global_step"] == 2
    assert isinstance(load_method_from_checkpoint(last), ToyMethod)


def test_truncated_checkpoint_is_reported(tmp_path):
    _run(tmp_path, 1, save_every=1)
    data = (tmp_path / "last.ckpt").read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt: is not a readable PyTorch checkpoint"):
        load_method_from_checkpoint(bad)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_method_from_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_from_another_method_is_refused(tmp_path):
    _run(tmp_path / "a", 1, save_every=1)
    path = tmp_path / "a" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"holds a toy model \(train_toy.ToyMethod\), but other_toy was expected"):
        load_method_from_checkpoint(path, expected="other_toy")
    with pytest.raises(CheckpointError, match=r"last.ckpt: holds a toy model .* but this run trains other_toy"):
        _run(tmp_path / "b", 2, ckpt_path=path, method_cls=OtherToyMethod)


def test_checkpoint_with_missing_keys_names_them(tmp_path):
    _run(tmp_path, 1, save_every=1)
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    del ckpt["state_dict"]["method.net.conv2.bias"]
    for state in ckpt["callbacks"].values():
        if isinstance(state, dict) and "shadow" in state:
            del state["shadow"]["net.conv2.bias"]
    broken = tmp_path / "broken.ckpt"
    torch.save(ckpt, broken)
    with pytest.raises(CheckpointError, match=r"broken.ckpt: the EMA weights do not fit the toy model .*"
                                              r"missing keys: net.conv2.bias"):
        load_method_from_checkpoint(broken)
    with pytest.raises(CheckpointError, match=r"broken.ckpt: the model weights .* missing keys: net.conv2.bias"):
        load_method_from_checkpoint(broken, ema=False)
    with pytest.raises(CheckpointError, match=r"broken.ckpt: the model weights .* missing keys: net.conv2.bias"):
        _run(tmp_path / "r", 2, ckpt_path=broken)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="was not written by medrs_diff.train.DiffusionTask"):
        load_method_from_checkpoint(tmp_path / "foreign.ckpt")


def test_datamodule_is_seeded_and_splits_ranks():
    ds = BlobDataset(10)

    def order(seed, epoch, rank=0, world=1):
        dm = DictDataModule(ds, batch_size=3, seed=seed)
        dm._rank_world = lambda: (rank, world)
        loader = dm.train_dataloader()
        assert isinstance(loader, ResumableDataLoader)
        loader.sampler.set_epoch(epoch)
        return [int(i) for b in loader for i in b["index"]]

    assert order(0, 0) == order(0, 0) and sorted(order(0, 0)) == list(range(10))
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    r0, r1 = order(0, 0, 0, 2), order(0, 0, 1, 2)
    assert len(r0) == len(r1) == 5 and not set(r0) & set(r1)
    # a loader restored mid-epoch skips the batches already served
    dm = DictDataModule(ds, batch_size=3, seed=0)
    loader = dm.train_dataloader()
    loader.load_state_dict({"epoch": 0, "batches": 2})
    rest = [int(i) for b in loader for i in b["index"]]
    assert rest == order(0, 0)[6:] and loader.state_dict() == {"epoch": 0, "batches": 4}
    # with a sampler Lightning swapped in (overfit_batches: sequential), served batches are loaded and dropped
    seq = ResumableDataLoader(ds, batch_size=3, sampler=torch.utils.data.SequentialSampler(ds))
    seq.load_state_dict({"epoch": 0, "batches": 3})
    assert [int(i) for b in seq for i in b["index"]] == [9]
    batch = next(iter(dm.train_dataloader()))
    assert batch["path"][0].startswith("blob_") and batch["image"].shape == (3, 1, 16, 16)


class _RandomItems(torch.utils.data.Dataset):
    """Items drawn from the global torch / NumPy / Python RNGs, as random augmentations are."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        import random

        import numpy as np

        draw = float(np.random.rand())  # noqa: NPY002 - the legacy global state is what transforms use
        return {"index": torch.tensor(i), "t": torch.rand(()), "np": draw, "py": random.random()}


def test_worker_seeding_is_deterministic_and_leaves_global_rng_alone():
    def epoch_values(epoch):
        loader = DictDataModule(_RandomItems(), batch_size=2, num_workers=2, seed=5).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [(int(i), float(t), float(n), float(p))
                for b in loader for i, t, n, p in zip(b["index"], b["t"], b["np"], b["py"])]

    state = torch.get_rng_state()
    a, b, c = epoch_values(0), epoch_values(0), epoch_values(1)
    assert torch.equal(state, torch.get_rng_state())
    assert a == b and a != c
    assert len({v[1] for v in a}) == 8 and len({v[2] for v in a}) == 8  # workers draw different values


# -- class-path registry ---------------------------------------------------------------------------------
def test_method_class_paths_resolve_through_the_registry_without_imports(monkeypatch):
    import builtins

    from medrs_diff.methods import METHODS, SegDiff, SRDiff
    from medrs_diff.train.checkpoint import canonical_method_config, class_path_of, resolve_method_class

    def no_imports(*args, **kwargs):
        raise AssertionError(f"resolve_method_class imported {args[0]!r}")

    spellings = {
        SegDiff: ["segdiff", "SegDiff", class_path_of(SegDiff), "medrs_diff.methods.SegDiff",
                  "medrs_diff.methods.segdiff.SegDiff"],
        SRDiff: ["srdiff", "SRDiff", "medrs_diff.methods.SRDiff", "medrs_diff.methods.srdiff.SRDiff"],
        ToyMethod: ["train_toy.ToyMethod", "ToyMethod"],  # not registered, but already imported by this process
    }
    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_imports)
        found = {cls: [resolve_method_class(s) for s in names] for cls, names in spellings.items()}
        with pytest.raises(CheckpointError) as err:
            resolve_method_class("os.system")  # importable, but not a method: refused, never touched
    for cls, got in found.items():
        assert all(g is cls for g in got), (cls, got)
    assert str(err.value).startswith("method config: unknown method 'os.system'; valid methods: segdiff (SegDiff, ")
    assert ". Fix: " in str(err.value) and all(name in str(err.value) for name in METHODS)
    cfg = canonical_method_config({"class_path": "SegDiff", "init_args": {"in_channels": 2}})
    assert cfg == {"class_path": class_path_of(SegDiff), "init_args": {"in_channels": 2}}
    with pytest.raises(CheckpointError, match="needs a 'class_path'"):
        canonical_method_config({"init_args": {}})


def test_checkpoint_naming_an_unknown_class_is_refused_before_importing_it(tmp_path):
    import sys

    _run(tmp_path, 1, save_every=1)
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    for record in (ckpt["medrs_diff"]["method"], ckpt["hyper_parameters"]["method"]):
        record["class_path"] = "evil_module_never_imported.Payload"
    bad = tmp_path / "evil.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: unknown method 'evil_module_never_imported.Payload'; "
                                              r"valid methods: .*segdiff.*\. Fix: "):
        load_method_from_checkpoint(bad)
    with pytest.raises(CheckpointError, match="unknown method 'evil_module_never_imported.Payload'"):
        DiffusionTask.load_from_checkpoint(bad)
    assert "evil_module_never_imported" not in sys.modules
    # read_checkpoint leaves unknown paths as stored (only known spellings are upgraded)
    assert read_checkpoint(bad)["medrs_diff"]["method"]["class_path"] == "evil_module_never_imported.Payload"


def test_checkpoint_errors_share_the_one_style(tmp_path):
    import medrs_diff.errors

    assert CheckpointError is medrs_diff.errors.CheckpointError
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path / "nope.ckpt")
    assert str(err.value) == (f"{tmp_path / 'nope.ckpt'}: checkpoint file not found. "
                              "Fix: check the path (e.g. <log_dir>/checkpoints/last.ckpt)")
    assert err.value.fix.startswith("check the path") and isinstance(err.value, ValueError)


def test_ema_weights_are_read_by_the_checkpoint_module(tmp_path):
    from medrs_diff.train import checkpoint, ema

    _, ema_cb, _ = _run(tmp_path, 2, save_every=2)
    ckpt = read_checkpoint(tmp_path / "last.ckpt")
    assert ema.EMA_FORMAT == checkpoint.EMA_FORMAT
    weights = checkpoint.ema_state_dict(ckpt)
    assert set(weights) == set(ema_cb.shadow) and all(torch.equal(weights[k], ema_cb.shadow[k]) for k in weights)
    from_file = checkpoint.ema_state_dict(tmp_path / "last.ckpt")
    assert all(torch.equal(from_file[k], weights[k]) for k in weights)


def test_atomic_torch_save_round_trips_and_refuses_a_folder(tmp_path):
    from medrs_diff.errors import DataError
    from medrs_diff.train.checkpoint import atomic_torch_save

    target = tmp_path / "sub" / "x.ckpt"
    atomic_torch_save({"a": torch.arange(3)}, target)
    assert torch.equal(torch.load(target)["a"], torch.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["x.ckpt"]
    with pytest.raises(DataError, match="existing folder"):
        atomic_torch_save({"a": 1}, tmp_path / "sub")
