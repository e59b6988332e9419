"""8-bit review previews of a 1080p HDR frame, side by side with OCIO's CPU processor, in one run.

* OCIO direct: the ACES 2.0 SDR view (ACEScg → sRGB display) through OCIO's CPU processor, as
  :func:`farm.color.display_exact` does it: the baseline and the reference;
* farm ``Preview.apply``: the same view baked into a 3D LUT (OCIO's cost on the few cells and
  pixels the LUT cannot hold to one code value);
* the one-off bake of the preview (once per job).

The frame is a render-like ACEScg scene (1920×1080 RGBA float32): a sky from haze to blue with the
sun (3000) and its glow, tiles of everyday materials lit by sun and sky with soft shadows, three
saturated neon signs (×16), film grain and a soft alpha matte. Rounds alternate the two methods so
both see the same machine load; the table gives medians.

Run: ``.venv/bin/python benchmarks/preview.py`` (prints a Markdown table).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from farm.color import Preview, display_exact, load_config

WIDTH, HEIGHT = 1920, 1080
VIEW = ("ACEScg", "sRGB - Display", "ACES 2.0 - SDR 100 nits (Rec.709)")
ROUNDS = 7


def smooth_noise(rng: np.random.Generator, cell: int) -> np.ndarray:
    """Value noise in [0, 1): a coarse random grid, bilinearly upsampled to the frame."""
    grid = rng.random((HEIGHT // cell + 2, WIDTH // cell + 2))
    y, x = np.arange(HEIGHT) / cell, np.arange(WIDTH) / cell
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def hdr_frame(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH] / HEIGHT
    horizon, haze = 0.45, np.array([2.4, 2.3, 2.2])
    t = np.clip((horizon - yy) / horizon, 0, 1)[..., None]
    sky = (1 - t) * haze + t * np.array([0.25, 0.45, 1.3])
    sun = np.hypot(xx - 1.25, yy - 0.15)
    sky += (20 * np.exp(-sun / 0.03))[..., None] * np.array([1.0, 0.85, 0.6])
    sky[sun < 0.012] = [3000.0, 2800.0, 2400.0]
    materials = np.array(
        [
            [0.06, 0.16, 0.04],  # grass
            [0.25, 0.17, 0.10],  # soil
            [0.42, 0.42, 0.40],  # concrete
            [0.35, 0.12, 0.07],  # brick
            [0.80, 0.80, 0.78],  # white paint
            [0.45, 0.04, 0.03],  # red paint
            [0.04, 0.08, 0.45],  # blue paint
            [0.60, 0.45, 0.04],  # yellow paint
        ]
    )
    tiles = rng.integers(0, len(materials), (40, 80))
    albedo = materials[tiles[(yy * 20).astype(int) % 40, (xx * 20).astype(int) % 80]]
    albedo *= (0.6 + 0.8 * smooth_noise(rng, 24))[..., None]
    shade = np.where(smooth_noise(rng, 160) > 0.6, 0.08, 1.0)[..., None]
    light = 6.0 * shade * np.array([1.0, 0.95, 0.85]) + np.array([0.5, 0.6, 0.8])
    depth = np.clip((yy - horizon) / (1 - horizon), 1e-3, 1)[..., None]
    ground = albedo * light * depth + (1 - depth) ** 4 * haze
    rgb = np.where((yy < horizon)[..., None], sky, ground)
    neon = [(0.30, 0.20, (0.9, 0.05, 0.6)), (0.35, 0.60, (0.05, 0.9, 0.8)), (0.6, 1.4, (1, 0.4, 0))]
    for y0, x0, colour in neon:
        sign = (np.abs(yy - y0) < 0.03) & (np.abs(xx - x0) < 0.12)
        rgb[sign] = np.array(colour) * 16 * (0.8 + 0.4 * rng.random((sign.sum(), 1)))
    rgb *= 1 + 0.02 * rng.standard_normal((HEIGHT, WIDTH, 1))  # grain
    alpha = np.clip(smooth_noise(rng, 200) * 3 - 1, 0, 1)
    return np.dstack([rgb, alpha]).astype(np.float32)


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    config = load_config("ocio://default")
    frame = hdr_frame()
    started = time.perf_counter()
    preview = Preview.bake(config, *VIEW)
    bake_s = time.perf_counter() - started
    preview.apply(frame)  # builds its OCIO processors once, as a worker's first frame does

    # Alternate the two so that both see the same machine load.
    pairs = [
        (timed(lambda: display_exact(frame, config, *VIEW)), timed(lambda: preview.apply(frame)))
        for _ in range(ROUNDS)
    ]
    exact_s = statistics.median(p[0] for p in pairs)
    farm_s = statistics.median(p[1] for p in pairs)
    error = np.abs(preview.apply(frame).astype(int) - display_exact(frame, config, *VIEW)).max()

    print(f"{WIDTH}x{HEIGHT} RGBA float32 HDR frame, {' / '.join(VIEW)}, median of {ROUNDS}\n")
    print("| method | time (ms) | speed-up | max error (8-bit codes) |")
    print("|---|---:|---:|---:|")
    print(f"| OCIO direct CPU processor (baseline) | {exact_s * 1e3:.0f} | 1.0 | 0 |")
    print(f"| farm Preview.apply | {farm_s * 1e3:.0f} | {exact_s / farm_s:.1f} | {error} |")
    print(f"| Preview.bake (once per job) | {bake_s * 1e3:.0f} | | |")
    print(
        "\nGoals: Preview.apply ≥ 10× faster than OCIO direct, max error ≤ 1 code value (1/255)."
        f" {preview.hard[:-1, :-1, :-1].mean():.1%} of the LUT's cells take OCIO's path."
    )


if __name__ == "__main__":
    main()
