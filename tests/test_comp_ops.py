"""Compositing operations against hand-computed pixels, on real OIIO."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from farm.errors import FarmError
from workers.comp_ops import ACESCG_LUMA, add, crop, grade, over, resize


def image(*pixels: tuple[float, ...]) -> np.ndarray:
    """A one-row image of the given pixels."""
    return np.array([pixels], dtype=np.float32)


def test_over_partial_alpha_by_hand():
    fg = image((0.4, 0.2, 0.0, 0.5), (0.0, 0.0, 0.0, 0.0), (0.1, 0.2, 0.3, 1.0))
    bg = image((0.2, 0.6, 1.0, 1.0), (0.5, 0.5, 0.5, 0.5), (0.9, 0.9, 0.9, 1.0))
    expected = image(
        (0.4 + 0.2 * 0.5, 0.2 + 0.6 * 0.5, 0.0 + 1.0 * 0.5, 0.5 + 1.0 * 0.5),
        (0.5, 0.5, 0.5, 0.5),
        (0.1, 0.2, 0.3, 1.0),
    )
    result = over(fg, bg)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_over_an_opaque_plate_stays_rgb():
    fg = image((0.4, 0.2, 0.0, 0.25))
    plate = image((0.8, 0.4, 0.2))
    np.testing.assert_allclose(over(fg, plate), image((0.4 + 0.6, 0.2 + 0.3, 0.0 + 0.15)))


def test_fg_without_alpha_is_opaque():
    fg = image((0.3, 0.2, 0.1))
    bg = image((0.9, 0.9, 0.9, 0.5))
    np.testing.assert_array_equal(over(fg, bg), image((0.3, 0.2, 0.1, 1.0)))
    np.testing.assert_array_equal(over(fg, image((0.9, 0.9, 0.9))), fg)


def test_over_refuses_different_sizes_in_one_line():
    with pytest.raises(FarmError, match="4×2 and 3×2") as refusal:
        over(np.zeros((2, 4, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    assert "\n" not in str(refusal.value)


def test_over_refuses_wrong_channel_count():
    with pytest.raises(FarmError, match="fg must be"):
        over(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 4), np.float32))


def test_add_sums_light_and_keeps_the_larger_coverage():
    a = image((0.1, 0.2, 0.3, 0.5), (1.0, 0.0, 0.0, 1.0))
    b = image((0.4, 0.5, 0.6, 0.25), (2.0, 1.0, 0.0, 1.0))
    np.testing.assert_allclose(add(a, b), image((0.5, 0.7, 0.9, 0.5), (3.0, 1.0, 0.0, 1.0)))


def test_add_takes_alpha_from_the_pass_that_has_it():
    with_alpha = image((0.1, 0.1, 0.1, 0.3))
    light = image((0.2, 0.3, 0.4))
    expected = image((0.3, 0.4, 0.5, 0.3))
    np.testing.assert_allclose(add(with_alpha, light), expected)
    np.testing.assert_allclose(add(light, with_alpha), expected)
    np.testing.assert_allclose(add(light, light), image((0.4, 0.6, 0.8)))


def test_grade_exposure_in_stops():
    px = image((0.1, 0.2, 0.4, 0.5))
    np.testing.assert_allclose(grade(px, exposure=1.0), image((0.2, 0.4, 0.8, 0.5)))
    np.testing.assert_allclose(grade(px, exposure=-2.0), image((0.025, 0.05, 0.1, 0.5)))


def test_grade_saturation_around_rec709_luminance():
    px = image((1.0, 0.0, 0.0, 1.0), (0.2, 0.4, 0.6, 0.5))
    y = 0.2126 * 0.2 + 0.7152 * 0.4 + 0.0722 * 0.6
    grey = grade(px, saturation=0.0)
    np.testing.assert_allclose(grey, image((0.2126,) * 3 + (1.0,), (y, y, y, 0.5)), rtol=1e-6)
    double = grade(px, saturation=2.0)
    expected = [y + 2 * (c - y) for c in (0.2, 0.4, 0.6)]
    np.testing.assert_allclose(double[0, 1], [*expected, 0.5], rtol=1e-6)


def test_grade_with_acescg_weights_and_both_at_once():
    px = image((0.5, 0.25, 0.125))
    exposed = [c * 2**0.5 for c in (0.5, 0.25, 0.125)]
    y = sum(w * c for w, c in zip(ACESCG_LUMA, exposed, strict=True))
    result = grade(px, exposure=0.5, saturation=0.5, luma=ACESCG_LUMA)
    np.testing.assert_allclose(result[0, 0], [y + 0.5 * (c - y) for c in exposed], rtol=1e-6)


def test_crop_is_a_copy_of_the_box():
    px = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
    box = crop(px, 2, 1, 3, 2)
    np.testing.assert_array_equal(box, px[1:3, 2:5])
    box[:] = -1
    assert px.min() == 0
    np.testing.assert_array_equal(crop(px, 0, 0, 6, 5), px)


@pytest.mark.parametrize(
    "box", [(4, 0, 3, 1), (0, 4, 1, 2), (-1, 0, 2, 2), (0, 0, 0, 1), (0, 0, 7, 5)]
)
def test_crop_refuses_a_box_outside_the_image(box):
    with pytest.raises(FarmError, match="not inside the 6×5 image"):
        crop(np.zeros((5, 6, 4), np.float32), *box)


@pytest.mark.parametrize("size", [(3, 2), (40, 30), (17, 9)])
def test_resize_keeps_a_constant_image_constant(size):
    px = np.empty((9, 13, 4), np.float32)
    px[:] = (0.25, 0.5, 2.0, 1.0)
    result = resize(px, *size)
    assert result.shape == (size[1], size[0], 4)
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, np.broadcast_to(px[0, 0], result.shape), rtol=1e-5)


def test_resize_refuses_an_empty_size():
    with pytest.raises(FarmError, match="at least 1 pixel"):
        resize(np.zeros((2, 2, 3), np.float32), 0, 4)


finite = st.floats(-4.0, 64.0, width=32)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (3, 4, 4), elements=finite))
def test_over_a_transparent_black_fg_returns_bg_exactly(bg):
    np.testing.assert_array_equal(over(np.zeros_like(bg), bg), bg)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float32, (3, 4, 3), elements=finite),
    arrays(np.float32, (3, 4, 4), elements=finite),
)
def test_over_an_opaque_fg_returns_fg_exactly(fg_rgb, bg):
    fg = np.dstack([fg_rgb, np.ones((3, 4), np.float32)])
    np.testing.assert_array_equal(over(fg, bg), fg)
