"""2-D images via Pillow: (channel, y, x), every mode handled explicitly, lossless writes only."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medrs_diff import io
from medrs_diff.data import writers
from medrs_diff.errors import DataError
from medrs_diff.io import image2d

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_grey_and_rgb_round_trip(tmp_path, suffix):
    grey = RNG.integers(0, 256, (1, 6, 9), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (3, 6, 9), dtype=np.uint8)
    for name, x in (("grey", grey), ("rgb", rgb)):
        f = io.read(io.write(tmp_path / f"{name}{suffix}", x, None))
        assert f.geometry.layout == ("channel", "y", "x") and f.data.dtype == np.uint8
        np.testing.assert_array_equal(f.data, x)
    # row / column order is the file's: pixel (row 2, col 7) as Pillow sees it
    assert tuple(f.data[:, 2, 7]) == Image.open(tmp_path / f"rgb{suffix}").getpixel((7, 2))


def test_16bit_grey_and_integer_labels(tmp_path):
    x16 = RNG.integers(0, 65536, (1, 5, 4)).astype(np.uint16)
    f = io.read(io.write(tmp_path / "ct.png", x16, None))
    assert f.data.dtype == np.uint16 and np.array_equal(f.data, x16)
    labels = np.array([[0, 1, 2], [3, 300, 0]], dtype=np.int64)  # > 255 -> uint16
    g = io.read(io.write(tmp_path / "lab.png", labels, None))
    assert g.data.dtype == np.uint16 and np.array_equal(g.data[0], labels)
    exact = np.array([[0.0, 1.0], [2.0, 3.0]])  # an exactly integral float mask is accepted
    np.testing.assert_array_equal(io.read(io.write(tmp_path / "m.png", exact, None)).data[0], exact)
    b = io.read(io.write(tmp_path / "b.png", np.array([[True, False]]), None))
    np.testing.assert_array_equal(b.data[0], [[1, 0]])


def test_lossy_or_value_changing_writes_are_refused(tmp_path, listing):
    with pytest.raises(DataError, match=r"non-integer values.*Fix: scale it to integers first"):
        io.write(tmp_path / "p.png", np.array([[0.5, 1.0]]), None)
    with pytest.raises(DataError, match=r"JPEG output is refused: JPEG is lossy.*\.png"):
        io.write(tmp_path / "p.jpg", np.zeros((3, 4, 4), np.uint8), None)
    with pytest.raises(DataError, match="outside 0..65535"):
        io.write(tmp_path / "n.png", np.array([[-1, 2]]), None)
    with pytest.raises(DataError, match="16-bit colour"):
        io.write(tmp_path / "c.png", np.zeros((3, 4, 4), np.uint16), None)
    with pytest.raises(DataError, match="colour GIF output is refused"):
        io.write(tmp_path / "c.gif", np.zeros((3, 4, 4), np.uint8), None)
    with pytest.raises(DataError, match="has 5 channels"):
        io.write(tmp_path / "c.png", np.zeros((5, 4, 4), np.uint8), None)
    assert listing(tmp_path) == []


def test_jpeg_is_read_as_rgb_close_to_the_source(tmp_path):
    rgb = np.full((16, 16, 3), (200, 40, 90), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    f = io.read(tmp_path / "a.jpg")
    assert f.shape == (3, 16, 16) and f.geometry.extra["format"] == "JPEG"
    assert np.abs(f.data.astype(int) - np.moveaxis(rgb, -1, 0)).max() <= 3


def test_palette_images_grey_colour_and_index(tmp_path):
    grey = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("P")  # DRIVE-like GIF mask
    grey.save(tmp_path / "mask.gif")
    f = io.read(tmp_path / "mask.gif")
    assert f.shape == (1, 2, 2) and f.geometry.extra["mode"] == "P"
    np.testing.assert_array_equal(f.data[0], [[0, 255], [255, 0]])
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "voc.png")
    colour = io.read(tmp_path / "voc.png")
    np.testing.assert_array_equal(colour.data[:, 0, :].T, [[0, 0, 0], [255, 0, 0], [0, 128, 255]])
    index = io.read(tmp_path / "voc.png", palette="index")
    np.testing.assert_array_equal(index.data, [[[0, 1, 2]]])
    assert index.geometry.extra["palette"][3:6] == [255, 0, 0]


def test_alpha_is_dropped_or_kept_explicitly_and_bilevel_is_0_1(tmp_path):
    rgba = RNG.integers(0, 256, (4, 3, 5), dtype=np.uint8)
    Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA").save(tmp_path / "a.png")
    dropped = io.read(tmp_path / "a.png")
    assert dropped.shape == (3, 3, 5) and dropped.geometry.extra["alpha_dropped"]
    np.testing.assert_array_equal(dropped.data, rgba[:3])
    np.testing.assert_array_equal(io.read(tmp_path / "a.png", alpha="keep").data, rgba)
    la = np.stack([rgba[0], rgba[3]], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(io.read(tmp_path / "la.png").data, rgba[:1])
    Image.fromarray(np.array([[0, 255, 255]], np.uint8)).convert("1").save(tmp_path / "bw.png")
    bw = io.read(tmp_path / "bw.png")
    assert bw.data.dtype == np.uint8 and bw.data.tolist() == [[[0, 1, 1]]]


def test_unreadable_image_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"bad\.png: cannot be read as an image.*Fix:"):
        io.read(tmp_path / "bad.png")


def test_writers_shim_is_the_io_writer(tmp_path):
    assert writers.write_image2d is image2d.write_image2d
    out = writers.write_image2d(np.full((4, 4), 255, np.uint8), tmp_path / "m.tif")  # Pillow TIFF still works
    assert np.asarray(Image.open(out)).max() == 255
