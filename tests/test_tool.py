"""What the command-line tools share (ppadapt.apps.tool), the byte-size formatter
(ppadapt.utils.formatting) and the one list of image suffixes (ppadapt.data.images)."""
import warnings

import numpy as np
import pytest
from PIL import Image

from ppadapt.apps import image_inputs, predict
from ppadapt.apps.tool import INTERRUPTED, ArgumentParser, run_tool
from ppadapt.data import folder, images
from ppadapt.errors import ConfigError, PPAdaptWarning, TrainingInterrupted
from ppadapt.utils.formatting import format_size, size_in


def raising(exc):
    def main() -> int:
        raise exc
    return main


@pytest.mark.parametrize("exc, code, line", [
    (ConfigError("bad value (fix it)"), 2, "error: bad value (fix it)"),
    (TrainingInterrupted("interrupted: saved ...; continue with: ..."), 130,
     "interrupted: saved ...; continue with: ..."),
    (KeyboardInterrupt(), 130, INTERRUPTED),
])
def test_run_tool_ends_each_problem_with_one_line(capsys, exc, code, line):
    assert run_tool(raising(exc)) == code
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == line + "\n"


def test_run_tool_interrupt_text_warnings_and_bugs(capsys):
    assert run_tool(raising(KeyboardInterrupt()), interrupted="interrupted") == 130
    assert capsys.readouterr().err == "interrupted\n"

    def warns() -> int:
        warnings.warn("skipped 1 unreadable image file(s)", PPAdaptWarning)
        warnings.warn("To copy construct from a tensor, it is recommended ...", UserWarning)
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_tool(warns) == 0
    assert capsys.readouterr().err == "warning: skipped 1 unreadable image file(s)\n"
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_tool(raising(ZeroDivisionError()))


def test_argument_parser_errors_are_one_line(capsys):
    for parser, hint in ((ArgumentParser(prog="predict.py"), "(see predict.py --help)"),
                         (ArgumentParser(prog="bench.py", help_hint="--help"), "(see --help)")):
        parser.add_argument("--steps", type=int)
        with pytest.raises(SystemExit) as excinfo:
            parser.parse_args(["--steps", "x"])
        assert excinfo.value.code == 2
        assert capsys.readouterr().err == f"error: argument --steps: invalid int value: 'x' {hint}\n"


@pytest.mark.parametrize("nbytes, units, decimals, text", [
    (2104, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2}, "2.1 kB"),  # report.py
    (345_230_000, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2}, "345.23 MB"),
    (5 * 10 ** 9, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2}, "5.00 GB"),
    (12, ("kB", "MB", "GB"), {"kB": 1, "MB": 2, "GB": 2}, "0.0 kB"),  # below the first unit: still in it
    (921, ("KiB", "MiB"), 1, "0.9 KiB"),  # export.py
    (1_468_006, ("KiB", "MiB"), 1, "1.4 MiB"),
    (3 * 2 ** 30, ("KiB", "MiB"), 1, "3072.0 MiB"),  # no larger unit than the caller lists
    (700, ("B", "KiB", "MiB"), 1, "700 B"),  # bench.py
    (7_680, ("B", "KiB", "MiB"), 1, "7.5 KiB"),
    (4_789_336, ("MiB",), 2, "4.57 MiB"),  # the parameter summary
    (0, ("MiB",), 2, "0.00 MiB"),
])
def test_format_size_keeps_each_tools_format(nbytes, units, decimals, text):
    assert format_size(nbytes, units, decimals) == text


def test_format_size_missing_and_size_in():
    assert format_size(None) == "-" and format_size(None, missing="n/a") == "n/a"
    assert format_size(1536) == "1.5 KiB" and format_size(1023) == "1023 B"
    assert size_in(975.9 * 2 ** 20, "MiB") == "975.9" and size_in(2 ** 21, "MiB", 2) == "2.00"


def test_one_list_of_image_suffixes(tmp_path):
    assert image_inputs.IMAGE_SUFFIXES is images.IMAGE_SUFFIXES  # what expand_images reads (predict.py takes it from there)
    assert images.IMAGE_SUFFIX_TEXT == ".bmp, .jpeg, .jpg, .png, .webp"
    assert folder.decode_image is images.decode_image and predict.decode_image is images.decode_image
    pixels = np.full((6, 5, 3), 120, np.uint8)
    for name in ("a.png", "b.JPG", "c.webp", "d.gif", "e.tif", ".hidden.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    # A folder gives predict.py the files a training folder would use ...
    assert [p.name for p in predict.expand_images([str(tmp_path)])] == ["a.png", "b.JPG", "c.webp"]
    assert [p.name for p in predict.expand_images([str(tmp_path / "*")])] == ["a.png", "b.JPG", "c.webp"]
    # ... and a file named explicitly is read whatever its suffix.
    named = predict.expand_images([str(tmp_path / "d.gif"), str(tmp_path / "e.tif")])
    assert [images.decode_image(p).shape for p in named] == [(6, 5, 3), (6, 5, 3)]
