"""farm.color against OpenColorIO itself: conversions, the baked preview, and names refused."""

from __future__ import annotations

import math
import pickle

import numpy as np
import PyOpenColorIO as ocio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.color import Preview, check_space, check_view, convert, display_exact, load_config
from farm.errors import FarmError

VIEW = ("ACEScg", "sRGB - Display", "ACES 2.0 - SDR 100 nits (Rec.709)")


@pytest.fixture(scope="module")
def config() -> ocio.Config:
    return load_config("ocio://default")


@pytest.fixture(scope="module")
def preview(config: ocio.Config) -> Preview:
    return Preview.bake(config, *VIEW)  # seconds: once for the module


def hdr_pixels(count: int, seed: int, saturation: float = 0.6) -> np.ndarray:
    """Scene-linear colours from 2^-8 to 2^8, of every hue and up to ``saturation``."""
    rng = np.random.default_rng(seed)
    level = 2.0 ** rng.uniform(-8, 8, (count, 1))
    hue = rng.uniform(0, 2 * np.pi, (count, 1))
    offsets = np.hstack([np.cos(hue), np.cos(hue - 2 * np.pi / 3), np.cos(hue + 2 * np.pi / 3)])
    return (level * (1 + rng.uniform(0, saturation, (count, 1)) * offsets)).astype(np.float32)


def assert_within_one_code(pixels: np.ndarray, got: np.ndarray, want: np.ndarray) -> None:
    """At most one code value apart, except where OCIO's ACES 2.0 transform turns a bright colour
    black: it returns NaN on thin sheets of bright colours (a few random colours in a million), a
    defect of OCIO 2.6, not of the preview."""
    defect = (want[..., :3].max(axis=-1) == 0) & (pixels[..., :3].max(axis=-1) > 1)
    assert defect.mean() < 1e-4
    error = np.abs(got.astype(int) - want.astype(int)).max(axis=-1)
    assert error[~defect].max(initial=0) <= 1


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("ACEScg", "Linear Rec.709 (sRGB)"),
        ("ACEScg", "Linear P3-D65"),
        ("ACEScg", "ACES2065-1"),
        ("ACEScg", "ACEScct"),
        ("ACEScg", "sRGB Encoded Rec.709 (sRGB)"),
        ("sRGB Encoded Rec.709 (sRGB)", "scene_linear"),
    ],
)
def test_convert_is_ocios_own_processor_and_leaves_alpha(config, src, dst):
    alpha = np.linspace(0, 1, 48 * 64).reshape(48, 64)
    pixels = np.dstack([hdr_pixels(48 * 64, 1).reshape(48, 64, 3), alpha]).astype(np.float32)
    before = pixels.copy()
    want = pixels.copy()
    config.getProcessor(src, dst).getDefaultCPUProcessor().applyRGBA(want)
    got = convert(pixels, config, src, dst)
    assert got.dtype == np.float32 and got.shape == pixels.shape
    np.testing.assert_array_equal(got[..., :3], want[..., :3])
    np.testing.assert_array_equal(got[..., 3], pixels[..., 3])
    np.testing.assert_array_equal(pixels, before)  # a new array; the input is untouched
    np.testing.assert_array_equal(convert(pixels[..., :3], config, src, dst), got[..., :3])


@pytest.mark.parametrize("other", ["ACES2065-1", "Linear Rec.2020", "Linear Rec.709 (sRGB)"])
def test_linear_round_trip(config, other):
    pixels = hdr_pixels(100_000, 2, saturation=0.9).reshape(200, 500, 3)
    back = convert(convert(pixels, config, "ACEScg", other), config, other, "ACEScg")
    scale = np.abs(pixels).max(axis=-1, keepdims=True)  # relative to the pixel's brightness
    assert (np.abs(back - pixels) <= 1e-6 * scale).all()


def test_preview_matches_ocio_on_a_large_hdr_image(config, preview):
    pixels = hdr_pixels(1_000_000, 3).reshape(800, 1250, 3)
    before = pixels.copy()
    got = preview.apply(pixels)
    assert got.dtype == np.uint8 and got.shape == pixels.shape
    assert_within_one_code(pixels, got, display_exact(pixels, config, *VIEW))
    np.testing.assert_array_equal(pixels, before)


@settings(max_examples=100, deadline=None)
@given(
    colours=st.lists(
        st.tuples(
            st.floats(-8, 8),  # stops from 1
            st.floats(0, 2 * math.pi),  # hue
            st.floats(0, 0.6),  # saturation
            st.floats(0, 1),  # alpha
        ),
        min_size=1,
        max_size=64,
    )
)
def test_preview_matches_ocio_on_any_pixels(config, preview, colours):
    level, hue, saturation, alpha = np.array(colours).T
    offsets = np.stack([np.cos(hue), np.cos(hue - 2 * np.pi / 3), np.cos(hue + 2 * np.pi / 3)])
    rgb = 2.0**level * (1 + saturation * offsets)
    pixels = np.vstack([rgb, alpha]).T.reshape(1, -1, 4).astype(np.float32)
    assert_within_one_code(pixels, preview.apply(pixels), display_exact(pixels, config, *VIEW))


@pytest.mark.parametrize("grey", [0.0, 0.01, 0.18, 1.0, 16.0])
def test_grey_card_is_exact(config, preview, grey):
    card = np.full((32, 48, 3), grey, np.float32)
    np.testing.assert_array_equal(preview.apply(card), display_exact(card, config, *VIEW))


def test_negatives_nan_infinities_and_alpha(config, preview):
    """Values outside the LUT take OCIO's own path; alpha is ×255, rounded and clipped."""
    rgb = [
        [-1, 0.5, 0.5],
        [-1e-9, 0.2, 0.1],
        [np.nan, 0.5, 0.5],
        [np.inf, 1, 1],
        [-np.inf, 1, 1],
        [300, 2, 1],
        [1e30, 0, 0],
        [0.18, 0.18, 0.18],
    ]
    alpha = [[-0.5], [0.5 / 255], [1.5 / 255], [0.5], [1], [2], [np.nan], [1]]
    pixels = np.hstack([rgb, alpha]).reshape(1, -1, 4).astype(np.float32)
    got = preview.apply(pixels)
    np.testing.assert_array_equal(got, display_exact(pixels, config, *VIEW))
    assert got[0, :, 3].tolist() == [0, 1, 2, 128, 255, 255, 0, 255]


def test_preview_pickles(config, preview):
    pixels = np.dstack([hdr_pixels(4096, 4).reshape(64, 64, 3), np.full((64, 64), 0.5)])
    pixels = pixels.astype(np.float32)
    before = preview.apply(pixels)  # its OCIO processors are built by now, and not pickled
    copy = pickle.loads(pickle.dumps(preview))
    np.testing.assert_array_equal(copy.apply(pixels), before)


def test_other_views_through_their_own_tails(config):
    """Views without a display clamp or with a pure power curve: the tail's 1D LUT narrows to where
    the codes change, and a matrix bakes exactly into a coarse LUT."""
    pixels = hdr_pixels(200_000, 5).reshape(400, 500, 3)
    views = [
        ("sRGB - Display", "Un-tone-mapped"),
        ("Rec.1886 Rec.709 - Display", "Video (colorimetric)"),
        ("sRGB - Display", "Raw"),
    ]
    for display, view in views:
        preview = Preview.bake(config, "ACEScg", display, view, size=2)
        want = display_exact(pixels, config, "ACEScg", display, view)
        assert_within_one_code(pixels, preview.apply(pixels), want)


def test_load_config(monkeypatch):
    assert load_config("ocio://default") is load_config("ocio://default")
    monkeypatch.setenv("OCIO", "ocio://studio-config-latest")
    assert load_config().getName().startswith("studio-config")
    monkeypatch.delenv("OCIO")
    assert load_config() is load_config("ocio://default")


def refusal(call, *args) -> str:
    with pytest.raises(FarmError) as refused:
        call(*args)
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_bad_names_are_refused_in_one_line(config):
    assert "'ocio://nope'" in refusal(load_config, "ocio://nope")
    assert "did you mean 'ocio://cg-config-latest'" in refusal(
        load_config, "ocio://cg-config-lates"
    )
    assert "'/nowhere/studio.ocio'" in refusal(load_config, "/nowhere/studio.ocio")
    assert "is not a config file" in refusal(load_config, "/dev/zero")  # refused, not read
    assert refusal(check_space, config, "ACEScgg") == (
        "unknown colour space 'ACEScgg' in ocio://default (did you mean 'ACEScg'?)"
    )
    check_space(config, "lin_ap1")  # an alias
    check_space(config, "scene_linear")  # a role
    assert "'sRGB Display'" in refusal(check_view, config, "sRGB Display", VIEW[2])
    message = refusal(check_view, config, "sRGB - Display", "ACES 2.0")
    assert "'ACES 2.0'" in message and "'Un-tone-mapped'" in message
    assert "'Lin'" in refusal(convert, np.zeros((1, 1, 3), np.float32), config, "ACEScg", "Lin")
    assert "'Raw view'" in refusal(Preview.bake, config, "ACEScg", "sRGB - Display", "Raw view")
    assert "shape" in refusal(display_exact, np.zeros((4, 4), np.float32), config, *VIEW)
