"""Image bytes → model inputs: the same picture gives the same input however it is stored (8- or 16-bit, with or
without transparency). In process, no service."""

import io

import numpy as np
import pytest
from PIL import Image

from models.data import digits as D
from service import images
from service.images import digit_input, encode_png, picture_input, scene_input

STEP = 1 / 255 + 1e-6  # one 8-bit level: rounding is all the storage may change


def png(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def seven():
    """A real test-split "7" as 8-bit ink in 0..255, light on dark, 8×8 and drawn large (48×48, the crop path)."""
    test = D.digit_splits()["test"]
    small = np.round(test.images[np.flatnonzero(test.labels == 7)[0]] * 255).astype(np.uint8)
    return small, np.kron(small, np.ones((6, 6), np.uint8))


@pytest.fixture(scope="module")
def scene():
    canvases, _, _ = D.make_scenes(D.digit_splits()["test"], 1, seed=5)
    return canvases[0]


def sixteen_bit(gray: np.ndarray) -> bytes:
    """The same picture as a 16-bit grayscale PNG (65535 is white)."""
    return png(Image.fromarray(gray.astype(np.uint16) * 257))


def test_a_16_bit_png_is_the_same_input_as_the_8_bit_one(seven, scene):
    for ink in seven:
        assert Image.open(io.BytesIO(sixteen_bit(ink))).mode in ("I;16", "I")
        np.testing.assert_allclose(digit_input(sixteen_bit(ink)), digit_input(encode_png(ink)), atol=STEP)
    np.testing.assert_allclose(scene_input(sixteen_bit(scene)), scene_input(encode_png(scene)), atol=STEP)
    for color in ("RGB", "L"):
        np.testing.assert_allclose(picture_input(sixteen_bit(scene), (24, 24), color),
                                   picture_input(encode_png(scene), (24, 24), color), atol=STEP)


@pytest.mark.parametrize("mode", ["I", "I;16B", "F"])
def test_deeper_modes_are_scaled_not_clipped(monkeypatch, seven, mode):
    """What older Pillow opens a 16-bit PNG as ("I", 0..65535), big-endian 16-bit, and "F" (taken as 0..255, as
    Pillow converts it)."""
    ink = seven[1]
    deep = {"I": Image.fromarray(ink.astype(np.int32) * 257),
            "I;16B": Image.frombytes("I;16B", ink.shape[::-1], (ink.astype(">u2") * 257).tobytes()),
            "F": Image.fromarray(ink.astype(np.float32) + 0.3)}[mode]
    assert deep.mode == mode
    expected = digit_input(encode_png(ink))
    monkeypatch.setattr(images, "decode", lambda data: deep)
    np.testing.assert_allclose(digit_input(b"deep"), expected, atol=STEP)


def canvas(ink: np.ndarray, stroke: int, hidden: int) -> bytes:
    """``ink`` (0..255) drawn in ``stroke`` gray on a transparent canvas whose transparent pixels hold ``hidden``:
    alpha is the ink, as an HTML canvas exports anti-aliased strokes."""
    rgb = np.where(ink[..., None] > 0, stroke, hidden).repeat(3, -1)
    return png(Image.fromarray(np.dstack([rgb, ink]).astype(np.uint8), "RGBA"))


@pytest.mark.parametrize("stroke", [0, 255])
@pytest.mark.parametrize("hidden", [0, 255])
def test_strokes_on_a_transparent_canvas_are_the_digit(seven, stroke, hidden):
    """Black (or white) strokes on transparent, whatever colour the transparent pixels hold, are the same input as
    the digit drawn light on black: dropping alpha made black on transparent black a blank image."""
    for ink in seven:
        expected = digit_input(encode_png(ink))
        assert expected.max() == 1.0
        np.testing.assert_allclose(digit_input(canvas(ink, stroke, hidden)), expected, atol=2 * STEP)


def test_a_transparent_scene_keeps_its_strokes(scene):
    np.testing.assert_allclose(scene_input(canvas(scene, 255, 255)), scene_input(encode_png(scene)), atol=STEP)


def test_la_and_a_palette_with_a_transparent_colour(seven):
    ink = seven[1]
    expected = digit_input(encode_png(ink))
    la = Image.merge("LA", (Image.new("L", ink.shape[::-1], 0), Image.fromarray(ink)))  # black, alpha = ink
    np.testing.assert_allclose(digit_input(png(la)), expected, atol=2 * STEP)

    strokes = (ink > 127).astype(np.uint8)  # palette: 0 = transparent black, 1 = opaque black
    palette = Image.fromarray(strokes, "P")
    palette.putpalette([0, 0, 0, 0, 0, 0])
    data = png(palette, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_allclose(digit_input(data), digit_input(encode_png(strokes * 255)), atol=STEP)


def test_a_16_bit_png_with_a_transparent_value(seven):
    ink = seven[1]
    hidden = 1000  # no multiple of 257: not an ink level
    deep = np.where(ink > 0, ink.astype(np.uint16) * 257, hidden).astype(np.uint16)
    data = png(Image.fromarray(deep), transparency=hidden)
    np.testing.assert_allclose(digit_input(data), digit_input(encode_png(ink)), atol=STEP)


def test_an_opaque_picture_with_alpha_is_unchanged(scene):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    opaque, plain = png(Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)]), "RGBA")), encode_png(rgb)
    assert np.array_equal(digit_input(opaque), digit_input(plain))
    assert np.array_equal(scene_input(opaque), scene_input(plain))
    for color in ("RGB", "L"):
        assert np.array_equal(picture_input(opaque, (16, 16), color), picture_input(plain, (16, 16), color))
    unused = Image.fromarray(scene, "L")  # a transparent value no pixel has
    assert np.array_equal(scene_input(png(unused, transparency=7)), scene_input(encode_png(scene)))


def test_imported_models_see_transparency_on_white():
    """As transformers' ``convert_to_rgb`` composites it: a transparent pixel is white, a half-transparent red pink."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (255, 0, 0, 128)
    out = picture_input(png(Image.fromarray(rgba, "RGBA")), (4, 4))
    assert np.allclose(out[:, 0, 0], [1, 0, 0]) and np.allclose(out[:, 1, 1], 1)
    np.testing.assert_allclose(out[:, 0, 1], [1, 127 / 255, 127 / 255], atol=STEP)
