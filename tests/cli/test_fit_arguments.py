"""`medrs-diff fit` argument mistakes are one line with a fix (issue 11): LightningCLI / jsonargparse's
multi-line reports are condensed, and errors our classes raise while being built are shown as themselves."""

from __future__ import annotations

import pytest

from medrs_diff.cli import main
from medrs_diff.cli.lightning_cli import condense_parser_error


def _our_lines(err: str) -> list[str]:
    """stderr without the "--- Logging error ---" reports of log handlers still bound to the stderr of an
    earlier test (a pytest capture artefact, not output of the command)."""
    out, skipping = [], False
    for line in err.strip().splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and (line.startswith("Message:") or line.startswith("Arguments:")):
            skipping = line.startswith("Message:")
            continue
        if not skipping:
            out.append(line)
    return out


@pytest.mark.parametrize(("args", "expected"), [
    (["--model.init_args.lrr", "0.1"], "Option 'lrr' is not accepted"),
    (["--trainer.max_steps", "x"], "Expected a <class 'int'>. Got value: x"),
    (["--data.init_args.batch_size", "-3"], "NiftiSegmentationDataModule: batch_size must be >= 1, got -3"),
])
def test_bad_fit_arguments_give_one_line(tmp_path, capsys, args, expected):
    rc = main(["fit", "--config", "segdiff_phantom2d", "--trainer.default_root_dir", str(tmp_path), *args])
    err = _our_lines(capsys.readouterr().err)
    assert rc == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("medrs-diff fit: error: ") and expected in err[-1] and "Fix:" in err[-1]
    assert not any(tmp_path.iterdir())  # nothing written


def test_condense_keeps_the_key_and_the_telling_lines():
    text = ('Parser key "model":\n  Does not validate\n  - Problem:\n      Option \'x\' is not accepted\n'
            "  - Expected a <class 'NoneType'>\n")
    assert condense_parser_error(text) == ("Parser key \"model\"; Option 'x' is not accepted; "
                                           "Expected a <class 'NoneType'>")
    assert condense_parser_error("") == "invalid arguments"
