"""Text progress lines for runs without a progress bar: the line's arithmetic, when it prints, and the CLI's use."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medrs_diff.errors import ArgumentError
from medrs_diff.train.progress import TextProgress, format_duration, progress_line


def test_format_duration():
    assert format_duration(45.2) == "45 s"
    assert format_duration(119) == "119 s"
    assert format_duration(360) == "6 min"
    assert format_duration(2 * 3600 + 5 * 60 + 10) == "2 h 05 min"


def test_progress_line_estimates_the_time_left_from_the_rate():
    # 1200 of 12000 steps, 1000 of them in 300 s since a resume at step 200: 10800 steps left at 0.3 s each
    line = progress_line(1200, 12000.0, 300.0, 1000, {"train/loss": 0.04123})
    assert line == "step 1200/12000 (10%) · train/loss 0.04123 · 5 min elapsed · about 54 min left"


def test_progress_line_without_a_known_total_or_rate():
    assert progress_line(7, float("inf"), 3.0, 7) == "step 7 · 3 s elapsed"
    assert progress_line(0, 10.0, 0.5, 0) == "step 0/10 (0%) · 0 s elapsed"
    assert progress_line(10, 10.0, 20.0, 10) == "step 10/10 (100%) · 20 s elapsed"


@pytest.mark.parametrize("every_s", [0, -1, float("nan"), float("inf")])
def test_bad_interval_is_refused(every_s):
    with pytest.raises(ArgumentError, match="every_s must be a positive number"):
        TextProgress(every_s=every_s)


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _train(tmp_path, progress: TextProgress, bar: bool) -> None:
    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=bar, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[progress], log_every_n_steps=1)
    trainer.fit(_Linear(), DataLoader(data, batch_size=2))


def test_a_line_per_interval_when_no_bar_is_shown(tmp_path):
    out = io.StringIO()
    _train(tmp_path, TextProgress(every_s=1e-9, stream=out), bar=False)
    lines = out.getvalue().splitlines()
    assert [line.split(" · ")[0] for line in lines] == ["step 1/3 (33%)", "step 2/3 (67%)", "step 3/3 (100%)"]
    assert all(" · train/loss " in line for line in lines)
    assert "left" in lines[0] and "left" not in lines[-1]


def test_silent_beside_a_progress_bar_and_in_short_runs(tmp_path):
    beside_bar, short = io.StringIO(), io.StringIO()
    _train(tmp_path, TextProgress(every_s=1e-9, stream=beside_bar), bar=True)
    _train(tmp_path, TextProgress(every_s=3600, stream=short), bar=False)
    assert beside_bar.getvalue() == "" and short.getvalue() == ""


def test_fit_prints_progress_lines_when_stdout_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    from medrs_diff.cli import main
    from medrs_diff.train import progress
    from medrs_diff.train.recipe import recipe_dir

    monkeypatch.setattr(progress, "DEFAULT_EVERY_S", 1e-9)  # the CLI's TextProgress() reads it
    rc = main(["fit", "--config", str(recipe_dir() / "segdiff_phantom2d.yaml"), "--data.init_args.root",
               str(tmp_path / "data"), "--data.init_args.phantoms", "2", "--trainer.default_root_dir",
               str(tmp_path / "run"), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "step 1/2 (50%) · train/loss " in err and "step 2/2 (100%) · train/loss " in err
