"""The recipe's fast-path flags reach the denoiser and leave the training loss unchanged."""

import torch

from medrs_diff.methods import SegDiff
from medrs_diff.nets.fastpath import CheckpointBlock, FastPath
from medrs_diff.train import DiffusionTask

TINY = dict(channels=(16, 32), attention_levels=(False, False), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, rrdb_blocks=1, rrdb_features=8, rrdb_growth=8)


def test_fast_path_flags_apply_and_keep_the_loss():
    torch.manual_seed(0)
    plain = SegDiff(in_channels=1, **TINY)
    fast = SegDiff(in_channels=1, **TINY)
    fast.load_state_dict(plain.state_dict())
    task = DiffusionTask(fast, fast_path=FastPath(channels_last=True, checkpointing=True))
    assert any(isinstance(m, CheckpointBlock) for m in fast.modules())
    assert task.hparams["fast_path"]["channels_last"] is True  # stored as a plain dict in checkpoints
    batch = {"image": torch.randn(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}
    losses = []
    for m in (plain, fast):
        loss, _ = m.loss(batch, generator=torch.Generator().manual_seed(3))
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    g_plain = plain.unet.unet.conv_in.inner.conv.weight.grad
    g_fast = fast.unet.unet.conv_in.inner.conv.weight.grad
    assert torch.allclose(g_plain, g_fast.contiguous(), atol=1e-4)
    # Rebuilt from stored hyper-parameters (what load_from_checkpoint does), the dict becomes FastPath again.
    again = DiffusionTask(SegDiff(in_channels=1, **TINY), fast_path=dict(task.hparams["fast_path"]))
    assert any(isinstance(m, CheckpointBlock) for m in again.method.modules())
