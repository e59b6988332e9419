"""Colour management for compositing and review jobs, on OpenColorIO.

Workers import this module, so it imports only numpy, PyOpenColorIO and :mod:`farm.errors`.

* Configs are OCIO's built-in ones (``ocio://default``, ``ocio://cg-config-latest``,
  ``ocio://studio-config-latest`` and the versioned names) or a ``.ocio`` file; ``$OCIO`` when no
  name is given. Colour spaces, displays and views are checked before a job starts, so a typo is
  refused in one line that names it.
* :func:`convert` and :func:`display_exact` go through OCIO's own CPU processor: the reference.
* :class:`Preview` makes 8-bit review frames fast: the ACES 2.0 views cost about 0.4 µs a pixel
  through OCIO's CPU processor (0.8–1.2 s a 1080p frame); a baked preview applies about 15 times
  faster, within one code value of :func:`display_exact`. Its docstring says how and how far.
"""

from __future__ import annotations

import difflib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import PyOpenColorIO as ocio

from farm.errors import FarmError

DEFAULT_CONFIG = "ocio://default"
MAX_CONFIG_BYTES = 16 * 2**20  # a config file larger than this is no OCIO config
_BUILTIN_ALIASES = ("default", "cg-config-latest", "studio-config-latest")
_LABELS: dict[int, str] = {}  # id of a config from load_config -> the name it was loaded by


def load_config(name: str | None = None) -> ocio.Config:
    """The OCIO config ``name`` (an ``ocio://`` URI or a ``.ocio`` path), else ``$OCIO``, else
    ``ocio://default``; parsed once per name, since a job checks and bakes against it often."""
    return _load(name or os.environ.get("OCIO") or DEFAULT_CONFIG)


@cache
def _load(name: str) -> ocio.Config:
    if not name.startswith("ocio://"):  # a file: not a device or a pipe that never ends
        path = Path(name)
        if not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES:
            raise FarmError(f"OCIO config {name!r} is not a config file (or an ocio:// name)")
    try:
        config = ocio.Config.CreateFromFile(name)
    except Exception as error:  # OCIO raises its own Exception types, one per failure kind.
        if name.startswith("ocio://"):
            registry = ocio.BuiltinConfigRegistry().getBuiltinConfigs()
            builtins = [*_BUILTIN_ALIASES, *(entry[0] for entry in registry)]
            hint = _did_you_mean(name.removeprefix("ocio://"), builtins, "ocio://")
            raise FarmError(f"unknown OCIO built-in config {name!r}{hint}") from None
        raise FarmError(
            f"cannot read OCIO config {name!r}: {' '.join(str(error).split())}"
        ) from None
    _LABELS[id(config)] = name  # cached configs live for good, so their ids stay theirs
    return config


def _label(config: ocio.Config) -> str:
    return _LABELS.get(id(config)) or config.getName() or "the OCIO config"


def _did_you_mean(word: str, candidates: list[str], prefix: str = "") -> str:
    by_folded = {c.casefold(): c for c in candidates}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1, cutoff=0.6)
    return f" (did you mean {prefix + by_folded[close[0]]!r}?)" if close else ""


def check_space(config: ocio.Config, name: str) -> None:
    """Refuse a colour space that is neither a space, an alias nor a role of ``config``."""
    if not config.getCanonicalName(name):
        names = [*config.getColorSpaceNames(), *(role for role, _ in config.getRoles())]
        raise FarmError(
            f"unknown colour space {name!r} in {_label(config)}{_did_you_mean(name, names)}"
        )


def check_view(config: ocio.Config, display: str, view: str) -> None:
    """Refuse a display ``config`` lacks, or a view that display lacks (listing its views)."""
    displays = list(config.getDisplays())
    if display not in displays:
        raise FarmError(
            f"unknown display {display!r} in {_label(config)}{_did_you_mean(display, displays)}"
        )
    views = list(config.getViews(display))
    if view not in views:
        raise FarmError(
            f"display {display!r} has no view {view!r}{_did_you_mean(view, views)};"
            f" its views: {', '.join(map(repr, views))}"
        )


def _image(pixels: np.ndarray) -> np.ndarray:
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)  # OCIO reads rows of whole pixels
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise FarmError(f"expected an H×W×3 or H×W×4 image, got shape {pixels.shape}")
    return pixels


def convert(pixels: np.ndarray, config: ocio.Config, src: str, dst: str) -> np.ndarray:
    """``pixels`` (float32 H×W×3 or H×W×4) from colour space ``src`` to ``dst``, exactly as OCIO's
    CPU processor does it, into a new float32 array; alpha is copied untouched."""
    check_space(config, src)
    check_space(config, dst)
    pixels = _image(pixels)
    out = pixels.copy()
    processor = config.getProcessor(src, dst).getDefaultCPUProcessor()
    if out.shape[2] == 4:
        processor.applyRGBA(out)
        out[..., 3] = pixels[..., 3]
    else:
        processor.applyRGB(out)
    return out


def _display_processor(config: ocio.Config, src: str, display: str, view: str) -> ocio.Processor:
    check_space(config, src)
    check_view(config, display, view)
    return config.getProcessor(ocio.DisplayViewTransform(src, display, view))


def _uint8(processor: ocio.Processor) -> ocio.CPUProcessor:
    """``processor`` ending in OCIO's own float → 8-bit conversion (×255, rounded half up, clipped,
    NaN → 0): the same codes as quantising its float output (checked on millions of pixels), at
    less cost than doing that in numpy."""
    return processor.getOptimizedCPUProcessor(
        ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_UINT8, ocio.OPTIMIZATION_DEFAULT
    )


def _apply_uint8(processor: ocio.CPUProcessor, rgb: np.ndarray, out: np.ndarray) -> None:
    """``processor`` from N×3 float32 ``rgb`` into N×3 uint8 ``out``; either may be the colour
    columns of an N×4 array (OCIO steps by their row strides), so alpha is never copied around."""
    n = len(rgb)
    # numpy's stride of a single row is arbitrary; OCIO wants it to span the pixel
    rgb_stride, out_stride = (rgb.strides[0], out.strides[0]) if n > 1 else (12, 3)
    processor.apply(
        ocio.PackedImageDesc(
            rgb, n, 1, ocio.CHANNEL_ORDERING_RGB, ocio.BIT_DEPTH_F32, 4, rgb_stride, n * rgb_stride
        ),
        ocio.PackedImageDesc(
            out,
            n,
            1,
            ocio.CHANNEL_ORDERING_RGB,
            ocio.BIT_DEPTH_UINT8,
            1,
            out_stride,
            n * out_stride,
        ),
    )


def _alpha_uint8(alpha: np.ndarray) -> np.ndarray:
    """Alpha as 8 bits, rounded and clipped as OCIO does colour (never through the view)."""
    return np.fmin(np.fmax(alpha * 255 + 0.5, 0), 255).astype(np.uint8)


def display_exact(
    pixels: np.ndarray, config: ocio.Config, src: str, display: str, view: str
) -> np.ndarray:
    """The display/view transform through OCIO's own CPU processor, quantised to uint8 as
    :meth:`Preview.apply` does: the reference the preview is measured against."""
    pixels = _image(pixels)
    processor = _uint8(_display_processor(config, src, display, view))
    channels = pixels.shape[2]
    out = np.empty(pixels.shape, np.uint8)
    _apply_uint8(processor, pixels.reshape(-1, channels)[:, :3], out.reshape(-1, channels)[:, :3])
    if channels == 4:
        out[..., 3] = _alpha_uint8(pixels[..., 3])
    return out


def _group(transforms: list[ocio.Transform]) -> ocio.GroupTransform:
    group = ocio.GroupTransform()
    for transform in transforms:
        group.appendTransform(transform)
    return group


def _split(processor: ocio.Processor) -> tuple[list[ocio.Transform], list[ocio.Transform]]:
    """The view as (what the 3D LUT bakes, the per-channel tail a 1D LUT applies after it).

    A display view ends with per-channel steps: the clamp to the display's range and its encoding
    curve. Baked into the 3D LUT, the clamp puts a crease at 0 that linear interpolation smears
    over whole cells (for ACES 2.0 SDR, 2.6% of the cells then miss one code value instead of
    1.5%); a 1D LUT holds them almost exactly, at half the cost of OCIO's own ops (powers)."""
    ops = list(processor.getOptimizedProcessor(ocio.OPTIMIZATION_DEFAULT).createGroupTransform())
    cut = len(ops)
    while cut and _per_channel(ops[cut - 1]):
        cut -= 1
    return ops[:cut], ops[cut:]


def _per_channel(op: ocio.Transform) -> bool:
    if isinstance(op, ocio.Lut1DTransform):
        return op.getHueAdjust() == ocio.HUE_NONE
    return isinstance(
        op,
        ocio.RangeTransform
        | ocio.ExponentTransform
        | ocio.ExponentWithLinearTransform
        | ocio.LogTransform
        | ocio.LogAffineTransform
        | ocio.LogCameraTransform,
    )


def _apply_threaded(processor: ocio.CPUProcessor, rgb: np.ndarray) -> None:
    """``processor`` over a C-contiguous N×3 array in place, in row blocks on every core: OCIO
    releases the GIL while it works, and a bake evaluates millions of points."""
    blocks = np.array_split(rgb, max(1, len(rgb) // 65536))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(processor.applyRGB, blocks))


def _grid(*axes: np.ndarray) -> np.ndarray:
    """All combinations of three axes as a C-contiguous N×3 float32 array, blue fastest (the
    order of OCIO's 3D LUTs)."""
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)


# The 3D LUT's input shaper: a float32's bit pattern read as an integer is a piecewise-linear log2
# of it, so shifting the bits of x + _TOE right gives a LUT index with `size` cells per stop,
# linear within each cell, in a few integer operations. [0, _TOE) is the first stop (a linear toe)
# and _STOPS stops cover scene-linear [0, _TOE·(2^_STOPS − 1)) = [0, 256); pixels outside that,
# and NaN or infinite ones, take OCIO's own path.
_TOE = np.float32(2.0**-6)
_STOPS = 14
_TOE_BITS = int(_TOE.view(np.int32))
_CURVE = 16384  # entries of the 1D LUT that holds the view's per-channel tail
_TOLERANCE = 0.8  # code values: cells whose LUT is off by more at a sample take OCIO's path
_CHUNK = 65536  # pixels per block in apply: its temporaries stay in the cache


class Preview:
    """A display/view transform from a scene-linear space to 8-bit display pixels, baked once per
    job into arrays (picklable, no OCIO objects inside) so every frame task on any node applies it
    fast.

    How: the view less its per-channel tail (see :func:`_split`) is sampled on a 3D grid with
    ``size`` nodes per stop of scene-linear light over [0, 256) — 113³ at 8 a stop (OCIO caps 3D
    LUTs at 129³) — and the tail into a 1D LUT; OCIO's CPU engine applies the two (tetrahedral
    interpolation), about 12 ns a pixel. A 3D LUT alone cannot hold ACES 2.0 to one code value:
    its gamut mapping has creases (where the mapped colour moves from one part of the gamut
    boundary to another, or a channel reaches the display's peak) and steep slopes in the darkest
    channel of saturated colours, where the LUT's error shrinks only in step with the cell size:
    30-odd code values at worst at 8 nodes a stop, 13 at 16. So the bake measures every cell
    against OCIO at the centroids of its six tetrahedra, and pixels in cells off by more than
    ``_TOLERANCE`` (about 1.5% of the cells: bright, saturated colours) are computed by OCIO
    itself, as are pixels outside [0, 256): negatives, NaN, infinities, the sun. For that the
    preview carries the config's text and rebuilds OCIO's processor once per process.

    Measured against :func:`display_exact` for ACEScg → sRGB / ACES 2.0 SDR: at most one code value
    on eight HDR photographs (Blender's studio lights), on a render-like frame and on random
    colours up to a moderate saturation, with 0–2% of their pixels on OCIO's path. Random colours
    of any saturation are harder: about one pixel in 100,000 lands in a crease the sampling missed
    and is 2–5 code values off. And OCIO 2.6's ACES 2.0 transform itself returns NaN (shown black)
    on thin sheets of bright colours (a few random colours in a million), where the preview shows
    the colour.
    """

    def __init__(
        self,
        source: tuple[str, str, str, str, str],
        size: int,
        lut: np.ndarray,
        curve: np.ndarray,
        hard: np.ndarray,
    ) -> None:
        self.source = source  # (config text, its working directory, src, display, view)
        self.size = size
        self.lut = lut  # float32 n×n×n×3: the view less its tail at the nodes, scaled to [0, 1]
        self.curve = curve  # float32 _CURVE×3: the tail over the scaled range
        self.hard = hard  # bool n³: cells whose pixels take OCIO's path (index n−1: outside)

    @classmethod
    def bake(cls, config: ocio.Config, src: str, display: str, view: str, size: int = 8) -> Preview:
        """Sample the view from ``src`` on ``display`` with ``size`` nodes per stop (1, 2, 4 or 8)
        and find the LUT's cells that need OCIO's path: seconds, once per job."""
        if size not in (1, 2, 4, 8):
            raise ValueError(f"size must be 1, 2, 4 or 8 nodes per stop, not {size}")
        processor = _display_processor(config, src, display, view)
        head, tail = _split(processor)
        nodes = _STOPS * size + 1
        lut = _grid(*[_linear(np.arange(nodes), size)] * 3)
        _apply_threaded(config.getProcessor(_group(head)).getDefaultCPUProcessor(), lut)
        tail_processor = config.getProcessor(_group(tail)).getDefaultCPUProcessor()
        low, high, curve = _sample_tail(tail_processor, np.nanmin(lut, 0), np.nanmax(lut, 0))
        lut = (lut - low) / (high - low)
        exact = processor.getDefaultCPUProcessor()
        fast = _lut_processor(lut, curve).getDefaultCPUProcessor()
        cells = nodes - 1
        off = np.zeros(cells**3, bool)
        for offset in itertools.permutations((0.75, 0.5, 0.25)):  # the tetrahedra's centroids
            want = _grid(*(_linear(np.arange(cells) + o, size) for o in offset))
            got = _grid(*((np.arange(cells) + o) / cells for o in offset))
            _apply_threaded(exact, want)
            _apply_threaded(fast, got)
            error = np.abs(np.clip(want, 0, 1) - np.clip(got, 0, 1)).max(axis=1) * 255
            off |= ~(error <= _TOLERANCE)  # NaN counts as off
        hard = np.ones((nodes, nodes, nodes), bool)  # the last index of each axis: outside
        hard[:cells, :cells, :cells] = off.reshape(cells, cells, cells)
        source = (config.serialize(), config.getWorkingDir(), src, display, view)
        return cls(source, size, lut.reshape(nodes, nodes, nodes, 3), curve, hard)

    @cached_property
    def _processors(self) -> tuple[ocio.CPUProcessor, ocio.CPUProcessor]:
        """(OCIO's own processor, the LUT one), both to 8 bits; OCIO's is rebuilt from the config's
        text once in each process."""
        text, working_dir, src, display, view = self.source
        config = ocio.Config.CreateFromStream(text)
        config.setWorkingDir(working_dir)
        exact = config.getProcessor(ocio.DisplayViewTransform(src, display, view))
        return _uint8(exact), _uint8(_lut_processor(self.lut, self.curve))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_processors"}

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Display pixels: float32 H×W×3 or H×W×4 scene-linear in, uint8 H×W×3 or H×W×4 out
        (alpha ×255, rounded, clipped)."""
        pixels = _image(pixels)
        height, width, channels = pixels.shape
        flat = pixels.reshape(-1, channels)
        out = np.empty(flat.shape, np.uint8)
        exact, fast = self._processors
        span = self.hard.shape[0]  # cells per axis, plus one for "outside"
        hard = self.hard.reshape(-1)
        shift = _shift(self.size)
        end = (span - 1) << shift  # the shaper's value at 256
        lut_input = np.empty((min(_CHUNK, len(flat)), channels), np.float32)
        for start in range(0, len(flat), _CHUNK):
            block = flat[start : start + _CHUNK]  # whole pixels: contiguous, so numpy runs fast
            position = (block + _TOE).view(np.int32)
            position -= _TOE_BITS  # < 0 below 0; NaN, ∞ and ≥ 256 lie above `end`
            unsigned = position.view(np.uint32)  # and so, as unsigned, do the negatives
            np.minimum(unsigned, end, out=unsigned)  # `end` stands for "outside"
            scaled = lut_input[: len(block)]
            np.multiply(position, np.float32(1 / end), out=scaled, dtype=np.float32)
            _apply_uint8(fast, scaled[:, :3], out[start : start + len(block), :3])
            position >>= shift
            cell = position[:, 0] * span
            cell += position[:, 1]
            cell *= span
            cell += position[:, 2]
            slow = np.flatnonzero(hard.take(cell))
            if len(slow):
                own = np.empty((len(slow), 3), np.uint8)
                _apply_uint8(exact, block[slow, :3], own)
                out[start + slow, :3] = own
        if channels == 4:
            out[:, 3] = _alpha_uint8(flat[:, 3])
        return out.reshape(height, width, channels)


def _shift(size: int) -> int:
    return 23 - size.bit_length() + 1  # 23 mantissa bits less log2(size)


def _linear(position: np.ndarray, size: int) -> np.ndarray:
    """The scene-linear value at a shaper position (in cells; fractions allowed)."""
    bits = np.rint(position * (1 << _shift(size))).astype(np.int64) + _TOE_BITS
    return bits.astype(np.int32).view(np.float32).astype(np.float64) - float(_TOE)


def _sample_tail(
    tail: ocio.CPUProcessor, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, curve): ``tail`` sampled at _CURVE points per channel over the part of [low,
    high] where its 8-bit output changes. Beyond that part the codes are constant, so the 1D LUT
    clamping its input there loses nothing; narrowing matters for views without a clamp (the
    display's [0, 1] is a sliver of what an unclamped matrix makes of [0, 256))."""
    for _ in range(2):  # the second pass, on the narrowed range, narrows it finely
        positions = np.linspace(low, high, _CURVE, dtype=np.float32)
        values = positions.copy()
        tail.applyRGB(values)
        codes = np.fmin(np.fmax(values * 255 + 0.5, 0), 255).astype(np.uint8)
        for channel in range(3):
            steps = np.flatnonzero(np.diff(codes[:, channel]))
            if len(steps):
                low[channel] = positions[steps[0], channel]
                high[channel] = positions[steps[-1] + 1, channel]
    high = np.where(high > low, high, low + 1)  # a constant channel: any range will do
    curve = np.linspace(low, high, _CURVE, dtype=np.float32)
    tail.applyRGB(curve)
    return low, high, curve


def _lut_processor(lut: np.ndarray, curve: np.ndarray) -> ocio.Processor:
    """OCIO's CPU engine for the tetrahedral 3D LUT (input: shaper position / cells, in [0, 1])
    and the tail's 1D LUT after it."""
    nodes = round(len(lut.reshape(-1, 3)) ** (1 / 3))
    cube = ocio.Lut3DTransform(gridSize=nodes)
    cube.setData(np.ascontiguousarray(lut, np.float32).reshape(-1))
    cube.setInterpolation(ocio.INTERP_TETRAHEDRAL)
    line = ocio.Lut1DTransform(length=len(curve))
    line.setData(np.ascontiguousarray(curve, np.float32).reshape(-1))
    return ocio.Config.CreateRaw().getProcessor(_group([cube, line]))


def default_config_name() -> str:
    """The config a spec that names none uses, as a name every node can load: ``$OCIO``, else
    OCIO's built-in default."""
    return os.environ.get("OCIO") or DEFAULT_CONFIG


def scene_linear(config: ocio.Config) -> str:
    """The config's scene-linear space (its ``scene_linear`` role): where comps work by default."""
    space = config.getColorSpace(ocio.ROLE_SCENE_LINEAR)
    if space is None:
        raise FarmError(f"{_label(config)} has no scene_linear role: give working_space")
    return space.getName()


def srgb_texture(name: str) -> str:
    """The space 8- and 16-bit images (PNG, JPEG, TIFF plates) are read in unless a spec says:
    the config's ``color_picking`` role, sRGB-encoded in OCIO's built-in configs."""
    config = load_config(name)
    space = config.getColorSpace(ocio.ROLE_COLOR_PICKING)
    if space is None:
        raise FarmError(f"{_label(config)} has no color_picking role: give the input a colorspace")
    return space.getName()


@cache
def _luma(name: str, space: str) -> tuple[float, float, float]:
    config = load_config(name)
    xyz = config.getColorSpace(ocio.ROLE_INTERCHANGE_DISPLAY)
    if xyz is None:
        red, green, blue = config.getDefaultLumaCoefs()
        return red, green, blue
    primaries = np.eye(3, dtype=np.float32)
    config.getProcessor(space, xyz.getName()).getDefaultCPUProcessor().applyRGB(primaries)
    weights = primaries[:, 1] / primaries[:, 1].sum()  # each primary's Y, white summing to 1
    return float(weights[0]), float(weights[1]), float(weights[2])


def luma(name: str, space: str) -> tuple[float, float, float]:
    """The luminance weights of ``space``'s primaries (their Y in CIE XYZ, white summing to 1):
    saturation turns around this grey, or greys drift in hue. Configs without OCIO's XYZ
    interchange role fall back to their default weights."""
    return _luma(name, space)
