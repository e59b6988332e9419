"""Comp and review jobs, for real: frames made from real EXR files with OpenImageIO and
OpenColorIO, a Blender render composited over a plate through the ``farm`` CLI, a chained comp on a
farm server, and every bad input refused before any frame runs."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest

from farm import color
from farm.errors import FarmError
from farm.tiling.imagefile import Pixels, read_pixels, write_frame
from pipelines import comp
from tests.test_train import farm, finish
from workers import comp_ops
from workers.comp import header, make_frame

RGBA = ("R", "G", "B", "A")


def exr(path: Path, pixels: np.ndarray, channels: tuple[str, ...] = RGBA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_frame(path, Pixels(pixels.astype(np.float32), channels), "zip")
    return path


def flat(width: int, height: int, value: tuple[float, ...]) -> np.ndarray:
    return np.broadcast_to(np.array(value, np.float32), (height, width, len(value))).copy()


def frame_of(data: dict, preview: color.Preview | None = None) -> tuple[comp.CompPlan, np.ndarray]:
    """Plan ``data`` against its files and make frame 1; the EXR written, as float32."""
    plan = comp.inspect(comp.parse(data), header)
    make_frame(plan, 1, preview)
    return plan, read_pixels(plan.output(1)).data.astype(np.float32)


def test_untouched_pixels_round_trip_and_conversions_there_and_back(tmp_path):
    rng = np.random.default_rng(7)
    hdr = rng.uniform(0, 1, (18, 32, 4)).astype(np.float32) ** 3 * 40
    hdr[..., 3] = rng.uniform(0, 1, (18, 32))
    exr(tmp_path / "in_0001.exr", hdr)
    base = {
        "inputs": {"shot": {"path": str(tmp_path / "in_####.exr")}},
        "output": {"path": str(tmp_path / "same_####.exr"), "depth": "float"},
    }
    _, same = frame_of(base)
    assert np.array_equal(same, hdr)  # no op: the pixels as they came, bit for bit

    there_and_back = {
        **base,
        "ops": [
            {"op": "convert", "to": "ACES2065-1"},
            {"op": "convert", "to": "ACEScg"},
        ],
        "output": {"path": str(tmp_path / "back_####.exr"), "depth": "float"},
    }
    _, back = frame_of(there_and_back)
    # Two float32 matrices there and back: within 1e-6 of each pixel's brightest channel.
    scale = np.abs(hdr[..., :3]).max(axis=2, keepdims=True)
    assert (np.abs(back[..., :3] - hdr[..., :3]) <= 1e-6 * scale).all()
    assert np.array_equal(back[..., 3], hdr[..., 3])  # alpha untouched

    # One way, against OpenColorIO's own processor on the same pixels.
    one_way = {**base, "output": {**base["output"], "path": str(tmp_path / "aces_####.exr")}}
    one_way["output"]["colorspace"] = "ACES2065-1"
    _, aces = frame_of(one_way)
    config = color.load_config("ocio://default")
    cpu = config.getProcessor("ACEScg", "ACES2065-1").getDefaultCPUProcessor()
    expected = hdr[..., :3].copy()
    cpu.applyRGB(expected)
    assert np.allclose(aces[..., :3], expected, rtol=1e-6, atol=1e-6)


def test_over_then_grade_makes_the_hand_computed_pixels(tmp_path):
    exr(tmp_path / "fg_0001.exr", flat(8, 4, (0.2, 0.1, 0.05, 0.5)))  # premultiplied
    exr(tmp_path / "bg_0001.exr", flat(8, 4, (0.4, 0.4, 0.4, 1.0)))
    data = {
        "inputs": {
            "fg": {"path": str(tmp_path / "fg_####.exr")},
            "bg": {"path": str(tmp_path / "bg_####.exr")},
        },
        "ops": [
            {"op": "over", "inputs": ["fg", "bg"]},
            {"op": "grade", "exposure": 1.0},
            {"op": "crop", "x": 2, "y": 1, "width": 4, "height": 2},
        ],
        "output": {"path": str(tmp_path / "out_####.exr"), "depth": "float"},
    }
    _, out = frame_of(data)
    assert out.shape == (2, 4, 4)
    # over: fg + bg × (1 − 0.5) = (0.4, 0.3, 0.25, 1); one stop up doubles the colour.
    assert np.allclose(out, [0.8, 0.6, 0.5, 1.0], atol=1e-6)


def test_layers_of_a_multilayer_exr_add_up_and_previews_match_opencolorio(tmp_path):
    diffuse = flat(16, 9, (0.25, 0.5, 1.0))
    glossy = flat(16, 9, (0.5, 0.25, 0.125))
    channels = tuple(f"ViewLayer.{layer}.{c}" for layer in ("DiffCol", "GlossCol") for c in "RGB")
    exr(tmp_path / "passes_0001.exr", np.concatenate([diffuse, glossy], axis=2), channels)
    rng = np.random.default_rng(3)
    exr(tmp_path / "hdr_0001.exr", rng.uniform(0, 1, (9, 16, 3)) ** 2 * 30, ("R", "G", "B"))
    data = {
        "inputs": {
            "diffuse": {"path": str(tmp_path / "passes_####.exr"), "layer": "ViewLayer.DiffCol"},
            "glossy": {"path": str(tmp_path / "passes_####.exr"), "layer": "ViewLayer.GlossCol"},
        },
        "ops": [{"op": "add", "inputs": ["diffuse", "glossy"]}],
        "output": {"path": str(tmp_path / "sum_####.exr"), "depth": "float"},
    }
    _, summed = frame_of(data)
    assert np.allclose(summed, [0.75, 0.75, 1.125], atol=1e-6)

    view = ("sRGB - Display", "ACES 2.0 - SDR 100 nits (Rec.709)")
    shown = {
        "config": "ocio://studio-config-latest",
        "inputs": {"hdr": {"path": str(tmp_path / "hdr_####.exr")}},
        "output": {
            "path": str(tmp_path / "hdr_out_####.exr"),
            "preview": str(tmp_path / "hdr_####.png"),
            "display": view[0],
            "view": view[1],
        },
    }
    source = read_pixels(tmp_path / "hdr_0001.exr").data.astype(np.float32)
    config = color.load_config("ocio://studio-config-latest")
    exact = color.display_exact(source, config, "ACEScg", *view)
    frame_of(shown)  # a job too small to repay a bake: OCIO's own processor, to the code
    assert np.array_equal(read_pixels(tmp_path / "hdr_0001.png").data, exact)
    baked = color.Preview.bake(config, "ACEScg", *view, size=2)  # a coarse bake: quick
    frame_of(shown, baked)
    assert np.array_equal(read_pixels(tmp_path / "hdr_0001.png").data, baked.apply(source))


def run_farm(args: list[str], home: Path) -> tuple[int, str, str]:
    return finish(farm(args, home), timeout=300)


COMP_OVER_PLATE = """
config = "ocio://studio-config-latest"
working_space = "ACEScg"

[inputs.shot]
after = true
layer = "ViewLayer.Combined"
colorspace = "Linear Rec.709 (sRGB)"

[inputs.sky]
path = "plates/sky_####.exr"

[[ops]]
op = "over"
inputs = ["shot", "sky"]

[[ops]]
op = "grade"
exposure = 0.5
saturation = 0.8

[output]
path = "comp/shot_####.exr"
depth = "float"
preview = "comp/preview/shot_####.png"

[review]
contact_sheet = "comp/contact.png"
movie = "comp/shot.mp4"
"""


def test_a_render_composited_over_a_plate_writes_every_frame_a_contact_sheet_and_a_movie(
    make_scene, tmp_path
):
    """``farm render … --comp``: Blender renders, then the comp runs after it on the same farm."""
    from examples.make_plate import plate

    scene = make_scene(48, 28, 2, 3, "--transparent", "--multilayer")
    for frame in (1, 2, 3):
        exr(tmp_path / f"plates/sky_{frame:04d}.exr", plate(48, 28, frame))
    (tmp_path / "comp.toml").write_text(COMP_OVER_PLATE)
    code, out, err = run_farm(
        ["render", str(scene), "-o", "renders/shot_####.exr", "--comp", "comp.toml", "--json"],
        tmp_path,
    )
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["render"]["written"] == 3
    made = summary["comp"]
    assert made["state"] == "done", made
    outputs = made["outputs"]
    assert [Path(p).name for p in outputs["frames"]] == [f"shot_{f:04d}.exr" for f in (1, 2, 3)]
    assert [Path(p).name for p in outputs["previews"]] == [f"shot_{f:04d}.png" for f in (1, 2, 3)]
    sheet = read_pixels(Path(outputs["contact_sheet"])).data
    assert sheet.shape[2] == 3 and sheet.shape[1] > 48

    with av.open(outputs["movie"]) as movie:
        decoded = [f.to_ndarray(format="rgb24") for f in movie.decode(video=0)]
    assert len(decoded) == 3
    assert decoded[0].shape[:2] == (28, 48)

    # The comp's pixels: the render's Combined layer over the plate, graded, in ACEScg.
    config = color.load_config("ocio://studio-config-latest")
    render = read_pixels(tmp_path / "renders/shot_0002.exr")
    names = list(render.channels)
    shot = render.data[..., [names.index(f"ViewLayer.Combined.{c}") for c in "RGBA"]]
    shot = color.convert(shot.astype(np.float32), config, "Linear Rec.709 (sRGB)", "ACEScg")
    assert shot[..., 3].min() < 0.5  # the sky is see-through: over has work to do
    expected = comp_ops.grade(
        comp_ops.over(shot, plate(48, 28, 2)),
        0.5,
        0.8,
        luma=color.luma("ocio://studio-config-latest", "ACEScg"),
    )
    made_frame = read_pixels(Path(outputs["frames"][1])).data
    assert np.allclose(made_frame, expected, rtol=1e-5, atol=1e-6)


def _bad_inputs(tmp: Path) -> None:
    """Inputs for the refusals: a 3-frame shot, a plate of 2 frames, one of another size, a plate
    whose second frame is not an image, and a multilayer file."""
    for frame in (1, 2, 3):
        exr(tmp / f"shot_{frame:04d}.exr", flat(16, 9, (0.1, 0.2, 0.3, 1.0)))
        exr(tmp / f"small_{frame:04d}.exr", flat(8, 4, (0.5, 0.5, 0.5, 1.0)))
    for frame in (1, 2):
        exr(tmp / f"short_{frame:04d}.exr", flat(16, 9, (0.5, 0.5, 0.5, 1.0)))
    for frame in (1, 3):
        exr(tmp / f"broken_{frame:04d}.exr", flat(16, 9, (0.5, 0.5, 0.5, 1.0)))
    (tmp / "broken_0002.exr").write_bytes(b"not an image at all")
    channels = tuple(f"ViewLayer.Combined.{c}" for c in "RGBA")
    for frame in (1, 2, 3):
        exr(tmp / f"layers_{frame:04d}.exr", flat(16, 9, (0.1, 0.2, 0.3, 1.0)), channels)


def _spec(plate: str = "short", **changes: str) -> str:
    inputs = changes.get(
        "inputs",
        f'[inputs.shot]\npath = "shot_####.exr"\n[inputs.plate]\npath = "{plate}_####.exr"\n',
    )
    return f"""
{inputs}
[[ops]]
op = "over"
inputs = ["shot", "plate"]
{changes.get("ops", "")}
[output]
path = "out/comp_####.exr"
preview = "out/comp_####.png"
{changes.get("output", "")}
"""


BAD = {
    "unknown colour space": (
        _spec("small", ops='[[ops]]\nop = "convert"\nto = "ACEScgg"\n'),
        ["ACEScgg"],
    ),
    "unknown view": (_spec("small", output='view = "Filmic Punchy"'), ["Filmic Punchy"]),
    "missing layer": (
        _spec(
            inputs='[inputs.shot]\npath = "layers_####.exr"\nlayer = "ViewLayer.Nope"\n'
            '[inputs.plate]\npath = "shot_####.exr"\n'
        ),
        ["ViewLayer.Nope", "ViewLayer.Combined"],
    ),
    "mismatched resolutions": (_spec("small"), ["16×9", "8×4"]),
    "mismatched frame ranges": (_spec("short"), ["plate", "lacks frame", "3"]),
    "unreadable plate": (_spec("broken"), ["plate", "broken_0002.exr"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_any_frame_runs_naming_the_problem(case, tmp_path):
    _bad_inputs(tmp_path)
    text, words = BAD[case]
    (tmp_path / "bad.toml").write_text(text)
    code, _, err = run_farm(["comp", "bad.toml"], tmp_path)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing written
    assert (
        not (tmp_path / ".farm" / "farm.db").exists()
        or "comp" not in run_farm(["jobs", "--json"], tmp_path).stdout
    )  # and no job stored


def test_spec_mistakes_are_one_line_refusals():
    cases = {
        "ops": {"inputs": {"a": {"path": "a_####.exr"}}, "ops": [{"op": "blur"}]},
        "output": {"inputs": {"a": {"path": "a_####.exr"}}},
        "bogus": {"inputs": {"a": {"path": "a_####.exr"}}, "bogus": 1, "output": {}},
        "after": {"inputs": {"a": {"path": "a.exr", "after": True}}},
    }
    words = {
        "ops": "unknown op 'blur'",
        "output": "[output] must be a table",
        "bogus": "unknown key 'bogus'",
        "after": "not both",
    }
    for name, data in cases.items():
        with pytest.raises(FarmError) as refused:
            comp.parse(data)
        assert words[name] in str(refused.value)
        assert "\n" not in str(refused.value)


def test_a_comp_chained_on_a_server_plans_when_its_render_is_done(
    farm_server, make_scene, tmp_path
):
    """``farm submit render`` then ``farm submit comp --after``: the comp waits, held; a plate
    short of the render's frames fails it at planning, with no frame task run; the right one
    runs and names its outputs in its status."""
    scene = make_scene(32, 18, 2, 2, "--transparent", "--multilayer")
    root = farm_server.data / "outputs" / "admin"
    for frame in (1, 2):
        exr(root / f"plates/sky_{frame:04d}.exr", flat(32, 18, (0.2, 0.3, 0.5, 1.0)))
    exr(root / "plates/short_0001.exr", flat(32, 18, (0.2, 0.3, 0.5, 1.0)))
    data = tomllib.loads(COMP_OVER_PLATE)
    data["output"]["preview"] = "comp/preview/shot_####.jpg"
    short = json.loads(json.dumps(data))
    short["inputs"]["sky"]["path"] = "plates/short_####.exr"
    with farm_server.client() as api:
        render = api.post(
            "/jobs/render",
            json={"scene": str(scene), "output": "renders/shot_####.exr", "threads": 1},
        )
        assert render.status_code == 201, render.text
        job = render.json()["id"]
        good = api.post("/jobs/comp", json={"spec": data, "after": [job]})
        bad = api.post("/jobs/comp", json={"spec": short, "after": [job]})
        assert good.status_code == bad.status_code == 201, good.text + bad.text
        assert api.get(f"/jobs/{good.json()['id']}").json()["state"] in ("held", "queued")
        states: dict[int, dict] = {}
        rendered = 0.0  # when the render was first seen done
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not rendered and api.get(f"/jobs/{job}").json()["state"] == "done":
                rendered = time.monotonic()
            states = {
                j: api.get(f"/jobs/{j}").json() for j in (good.json()["id"], bad.json()["id"])
            }
            if all(s["state"] in ("done", "failed", "cancelled") for s in states.values()):
                break
            time.sleep(0.2)
        # The render's idle warm slots make room at once: the comp waits for no idle timeout.
        assert rendered and time.monotonic() - rendered < 30
        made, refused = states[good.json()["id"]], states[bad.json()["id"]]
        assert refused["state"] == "failed" and "lacks frame(s) 2" in refused["message"]
        assert api.get(f"/jobs/{bad.json()['id']}/tasks").json() == []  # no frame ran
        assert made["state"] == "done", made
        assert len(made["outputs"]["frames"]) == 2 and made["outputs"]["movie"].endswith(".mp4")
        assert all(Path(p).is_relative_to(root) for p in made["outputs"]["previews"])
        # A comp with an input taken from no render is refused at once.
        lone = api.post("/jobs/comp", json={"spec": data})
        assert lone.status_code == 400 and "--after" in lone.json()["detail"]


def test_an_8_bit_plate_is_read_in_srgb_and_premultiplied_after_conversion(tmp_path):
    straight = np.zeros((2, 3, 4), np.uint8)
    straight[...] = (255, 64, 0, 128)  # PNG keeps straight alpha
    path = tmp_path / "plate_0001.png"
    write_frame(path, Pixels(straight, RGBA))
    data = {
        "inputs": {"plate": {"path": str(tmp_path / "plate_####.png")}},
        "output": {"path": str(tmp_path / "out_####.exr"), "depth": "float"},
    }
    plan, out = frame_of(data)
    [source] = plan.sources
    assert source.colorspace == "sRGB Encoded Rec.709 (sRGB)" and source.straight_alpha
    config = color.load_config("ocio://default")
    linear = color.convert(
        straight[..., :3].astype(np.float32) / 255, config, source.colorspace, "ACEScg"
    )
    alpha = np.float32(128 / 255)
    assert np.allclose(out[..., :3], linear * alpha, atol=1e-6)
    assert np.allclose(out[..., 3], alpha)
