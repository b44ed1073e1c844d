"""load_image on every format and mode a user's folder may hold; collect_inputs."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from deepspectral import defaults
from deepspectral.data.images import ImageLoadError, InputImage, collect_inputs, load_image


def _gradient(height=24, width=32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 90)], axis=2).astype(np.uint8)


def _check_rgb(array, shape):
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (*shape, 3)
    assert array.flags["C_CONTIGUOUS"]
    assert array.flags["WRITEABLE"]


# --------------------------------------------------------------------------- modes


def test_rgb_png_roundtrip(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    _check_rgb(out, rgb.shape[:2])
    np.testing.assert_array_equal(out, rgb)


def test_greyscale(tmp_path):
    grey = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = load_image(str(tmp_path / "g.png"))
    _check_rgb(out, (24, 32))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_bilevel(tmp_path):
    bits = np.zeros((8, 8), dtype=bool)
    bits[2:5, 3:7] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 0], bits.astype(np.uint8) * 255)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_is_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[0, 257, 32896], [65535, 12850, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"d{suffix}")
    with Image.open(tmp_path / f"d{suffix}") as check:
        assert check.mode.startswith("I")
    out = load_image(tmp_path / f"d{suffix}")
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, 257 -> 1
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_32bit_integer_in_16bit_range(tmp_path):
    values = np.array([[0, 65535], [32896, 514]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as check:
        assert check.mode == "I"
    out = load_image(tmp_path / "i.tif")
    np.testing.assert_array_equal(out[:, :, 1], np.rint(values / 257.0).astype(np.uint8))


def test_float_tiff(tmp_path):
    values = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    np.testing.assert_array_equal(out[:, :, 0], [[0, 128], [255, 64]])


def test_palette_with_transparency_on_white(tmp_path):
    palette_image = Image.new("P", (6, 4), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pixels = palette_image.load()
    for x in range(3):
        for y in range(4):
            pixels[x, y] = 1  # left half blue, right half red
    palette_image.info["transparency"] = 0  # red is transparent
    palette_image.save(tmp_path / "p.png", transparency=0)
    palette_image.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "palette images with transparency" warning
            out = load_image(tmp_path / name)
        _check_rgb(out, (4, 6))
        np.testing.assert_array_equal(out[0, 0], [0, 0, 255])
        np.testing.assert_array_equal(out[0, 5], [255, 255, 255])


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red-ish
    rgba[0, 1, 3] = 0  # fully transparent -> white
    rgba[0, 2, 3] = 128  # half -> halfway to white
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    half = 128 / 255
    np.testing.assert_allclose(out[0, 2], np.rint([200 * half + 255 * (1 - half), 255 * (1 - half), 255 * (1 - half)]), atol=1)


def test_la_composited_on_white(tmp_path):
    la = np.zeros((3, 3, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[..., 1] = 255
    la[1, 1, 1] = 0
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0, 0], [40, 40, 40])
    np.testing.assert_array_equal(out[1, 1], [255, 255, 255])


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (220, 30, 30)
    rgb[:, 8:] = (30, 30, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as check:
        assert check.mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    _check_rgb(out, (16, 16))
    assert out[8, 2, 0] > 150 and out[8, 2, 2] < 100  # red stays red
    assert out[8, 13, 2] > 150 and out[8, 13, 0] < 100  # blue stays blue


def test_exif_orientation_is_applied(tmp_path):
    # Stored 20 tall x 40 wide with a red marker at the stored top-left corner. Orientation
    # 6 means "rotate 90 degrees clockwise to display": the viewer shows 40 tall x 20 wide
    # and the stored top-left corner lands at the top-right.
    stored = np.full((20, 40, 3), 255, dtype=np.uint8)
    stored[:6, :6] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "rot.jpg")
    _check_rgb(out, (40, 20))
    top_right = out[1:4, -4:-1].reshape(-1, 3).mean(axis=0)
    top_left = out[1:4, 1:4].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 80  # the marker
    assert top_left.min() > 200  # white


@pytest.mark.parametrize("suffix,options", [(".webp", {"lossless": True}), (".bmp", {}), (".tiff", {}), (".ppm", {})])
def test_other_formats(tmp_path, suffix, options):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / f"x{suffix}", **options)
    out = load_image(tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(out, rgb)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "anim.gif") as check:
        assert check.n_frames == 3
    out = load_image(tmp_path / "anim.gif")
    _check_rgb(out, (8, 10))
    np.testing.assert_array_equal(out[4, 5], [255, 0, 0])


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 8), colour) for colour in ((0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=True)
    out = load_image(tmp_path / "anim.webp")
    np.testing.assert_array_equal(out[4, 5], [0, 255, 0])


def test_extension_does_not_matter(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "really_a_png.jpg", format="PNG")
    np.testing.assert_array_equal(load_image(tmp_path / "really_a_png.jpg"), rgb)


@pytest.mark.parametrize("name", ["with space.png", "ünïcödé 写真.png", "dir with space/ñ.png"])
def test_awkward_file_names(tmp_path, name):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = _gradient()
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(load_image(path), rgb)
    np.testing.assert_array_equal(load_image(str(path)), rgb)


# --------------------------------------------------------------------------- bad files


def _assert_load_error(path, *words):
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert Path(error.path) == Path(path)
    message = str(error)
    assert str(path) in message
    for word in words:
        assert word in message.lower()
    return error


def test_truncated_jpeg(tmp_path):
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _assert_load_error(tmp_path / "cut.jpg", "truncated")


def test_truncated_png(tmp_path):
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _assert_load_error(tmp_path / "cut.png", "truncated")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    _assert_load_error(tmp_path / "empty.jpg", "empty")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("these are not the pixels you are looking for\n" * 20)
    _assert_load_error(tmp_path / "notes.jpg", "not an image")


def test_missing_file_and_folder(tmp_path):
    _assert_load_error(tmp_path / "nope.png", "no such file")
    _assert_load_error(tmp_path, "not a regular file")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` pixels, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # 60000 x 60000 = 3.6e9 pixels: beyond PIL's own hard limit too.
    _png_header_only(tmp_path / "bomb.png", 60_000, 60_000)
    _assert_load_error(tmp_path / "bomb.png", "bomb")


def test_our_pixel_limit(tmp_path, monkeypatch):
    Image.fromarray(_gradient(40, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(defaults, "MAX_PIXELS", 1000)
    error = _assert_load_error(tmp_path / "big.png", "max_pixels")
    assert "2000" in str(error)  # 50 x 40 pixels named
    monkeypatch.setattr(defaults, "MAX_PIXELS", 2000)
    assert load_image(tmp_path / "big.png").shape == (40, 50, 3)


def test_pil_limits_surface_as_our_error(tmp_path, monkeypatch):
    Image.fromarray(_gradient(40, 50)).save(tmp_path / "big.png")
    # Above PIL's warning limit but within ours: loads, without PIL's warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "big.png").shape == (40, 50, 3)
    # Above PIL's hard limit (2x its warning limit): our error, naming the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    _assert_load_error(tmp_path / "big.png", "bomb")


def test_error_pickles(tmp_path):
    import pickle

    error = ImageLoadError(tmp_path / "x.png", "broken")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.path == error.path and str(copy) == str(error)


# --------------------------------------------------------------------------- collect_inputs


def _touch_image(path: Path, colour=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path, format="PNG")
    return path


def _names(items):
    return [item.relative.as_posix() for item in items]


def test_folder_recursive_sorted_images_only(tmp_path):
    root = tmp_path / "photos"
    for name in ["b.png", "a.JPG", "sub/z.jpeg", "sub/deeper/y.TIF", "c.WebP"]:
        _touch_image(root / name)
    (root / "notes.txt").write_text("hello")
    (root / "readme.md").write_text("hello")
    _touch_image(root / ".hidden.png")
    _touch_image(root / ".cache" / "x.png")
    items = collect_inputs([str(root)])
    assert all(isinstance(item, InputImage) for item in items)
    assert _names(items) == ["a", "b", "c", "sub/deeper/y", "sub/z"]
    assert items[0].path == root / "a.JPG"
    assert all(isinstance(item.relative, PurePosixPath) for item in items)


def test_same_name_in_different_folders_does_not_collide(tmp_path):
    _touch_image(tmp_path / "in" / "a" / "x.jpg")
    _touch_image(tmp_path / "in" / "b" / "x.jpg")
    assert _names(collect_inputs([tmp_path / "in"])) == ["a/x", "b/x"]


def test_single_files_use_their_stem_and_duplicates_are_renamed(tmp_path):
    first = _touch_image(tmp_path / "a" / "x.jpg")
    second = _touch_image(tmp_path / "b" / "x.jpg")
    third = _touch_image(tmp_path / "c" / "X.png")
    items = collect_inputs([str(first), str(second), str(third)])
    assert _names(items) == ["x", "x_2", "X_3"]
    assert [item.path for item in items] == [first, second, third]
    # deterministic
    assert _names(collect_inputs([str(first), str(second), str(third)])) == ["x", "x_2", "X_3"]


def test_renaming_skips_names_in_use(tmp_path):
    first = _touch_image(tmp_path / "a" / "x.png")
    second = _touch_image(tmp_path / "b" / "x.png")
    taken = _touch_image(tmp_path / "c" / "x_2.png")
    assert _names(collect_inputs([first, second, taken])) == ["x", "x_3", "x_2"]


def test_same_file_twice_is_kept_once(tmp_path):
    root = tmp_path / "photos"
    image = _touch_image(root / "a.png")
    _touch_image(root / "b.png")
    items = collect_inputs([root, image])
    assert _names(items) == ["a", "b"]


def test_same_name_same_extensionless_in_folder(tmp_path):
    root = tmp_path / "photos"
    _touch_image(root / "x.png")
    _touch_image(root / "x.jpg")
    assert _names(collect_inputs([root])) == ["x", "x_2"]


def test_txt_list(tmp_path):
    root = tmp_path / "data"
    _touch_image(root / "imgs" / "one.png")
    _touch_image(root / "imgs" / "two words.png")
    outside = _touch_image(tmp_path / "elsewhere" / "three.png")
    _touch_image(root / "folder" / "four.png")
    listing = root / "list.txt"
    listing.write_text(
        "# my images\n"
        "imgs/one.png\n"
        "\n"
        "   imgs/two words.png   \n"
        f"{outside}\n"
        "  # indented comment\n"
        "folder\n",
        encoding="utf-8",
    )
    items = collect_inputs([str(listing)])
    assert _names(items) == ["imgs/one", "imgs/two words", "three", "four"]
    assert items[0].path == root / "imgs" / "one.png"
    assert items[2].path == outside


def test_txt_list_missing_entry(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("missing.png\n")
    with pytest.raises(ValueError, match="missing.png.*line 1"):
        collect_inputs([listing])


def test_mix_of_files_folders_and_lists(tmp_path):
    single = _touch_image(tmp_path / "single.png")
    _touch_image(tmp_path / "dir" / "x.png")
    _touch_image(tmp_path / "listed" / "x.png")
    (tmp_path / "listed" / "l.txt").write_text("x.png\n")
    items = collect_inputs([single, tmp_path / "dir", tmp_path / "listed" / "l.txt"])
    assert _names(items) == ["single", "x", "x_2"]


def test_nonexistent_argument(tmp_path):
    with pytest.raises(ValueError, match="does-not-exist"):
        collect_inputs([str(tmp_path / "does-not-exist")])


def test_nothing_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        collect_inputs([tmp_path / "empty"])
