"""The comp job type: composite sequences per frame from a small TOML spec, then review them.

A spec names its inputs (a rendered sequence, a layer of a multilayer EXR, a plate), the ops that
make each frame (over, add, grade, crop, resize, convert), one linear EXR output with an optional
8-bit preview through a display/view transform, and an optional review (a contact sheet and an
H.264 movie of the previews). Every frame is a task; the review is one more task once every frame
is done.

Validation happens in two steps, both before any frame runs: :func:`parse` checks the spec itself
(its fields, the ops' inputs, every colour space, display and view); :func:`inspect` checks the
files (every frame of every input readable, the layers there, the sizes that meet in an op equal,
the frame ranges matching). A comp chained after a render is inspected when that render is done.

Relative paths are the submitter's: the working folder of ``farm comp`` on this machine, the
user's own folder on a farm server (like ``farm render -o``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from farm import color
from farm.errors import FarmError
from farm.frames import OutputPattern, parse_frames

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PREVIEW_TYPES = (".png", ".jpg", ".jpeg")
DEPTHS = ("half", "float")
# What each op takes: (fewest inputs, most inputs, its parameters with their types).
OPS: dict[str, tuple[int, int, dict[str, type]]] = {
    "over": (2, 2, {}),
    "add": (2, 64, {}),
    "grade": (1, 1, {"exposure": float, "saturation": float}),
    "crop": (1, 1, {"x": int, "y": int, "width": int, "height": int}),
    "resize": (1, 1, {"width": int, "height": int}),
    "convert": (1, 1, {"to": str}),
}
REQUIRED = {"crop": ("width", "height"), "resize": ("width", "height"), "convert": ("to",)}
MAX_SIZE = 65_536


@dataclass(frozen=True)
class Input:
    """A sequence (``####`` in its path), or one still used for every frame (no ``#``)."""

    name: str
    path: str | None  # None: the frames of the job this comp runs after
    layer: str | None = None  # a multilayer EXR's layer: its channels are LAYER.R, .G, .B (.A)
    colorspace: str | None = None  # None: the working space for float files, sRGB for 8/16 bit

    @property
    def after(self) -> bool:
        return self.path is None


@dataclass(frozen=True)
class Op:
    op: str
    inputs: tuple[str, ...]  # names of inputs or of earlier ops' results
    name: str  # what later ops call its result
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompSpec:
    inputs: tuple[Input, ...]
    ops: tuple[Op, ...]
    output: str  # linear EXR pattern
    config: str  # the OpenColorIO config, as a name every node can load
    working: str  # the colour space inputs are brought into and ops work in
    output_colorspace: str
    depth: str = "half"
    compression: str = "zip"
    preview: str | None = None
    display: str | None = None
    view: str | None = None
    frames: tuple[int, ...] | None = None  # None: every frame the inputs have
    contact_sheet: str | None = None
    movie: str | None = None
    fps: float = 24.0
    retries: int = 2

    @property
    def result(self) -> str:
        """The image the output writes: the last op's, or the only input's."""
        return self.ops[-1].name if self.ops else self.inputs[0].name

    def space_of(self, name: str) -> str:
        """The colour space the image ``name`` is in (inputs start in the working space)."""
        space = self.working
        for op in self.ops:
            if op.op == "convert" and op.name == name:
                return str(op.params["to"])
            if op.name == name:
                return self.space_of(op.inputs[0])
        return space

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": [
                {"name": i.name, "path": i.path, "layer": i.layer, "colorspace": i.colorspace}
                for i in self.inputs
            ],
            "ops": [
                {"op": o.op, "inputs": list(o.inputs), "name": o.name, "params": o.params}
                for o in self.ops
            ],
            "output": self.output,
            "config": self.config,
            "working": self.working,
            "output_colorspace": self.output_colorspace,
            "depth": self.depth,
            "compression": self.compression,
            "preview": self.preview,
            "display": self.display,
            "view": self.view,
            "frames": list(self.frames) if self.frames is not None else None,
            "contact_sheet": self.contact_sheet,
            "movie": self.movie,
            "fps": self.fps,
            "retries": self.retries,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompSpec:
        """The spec the store kept (:meth:`as_json`), validated when it was submitted."""
        return cls(
            inputs=tuple(Input(**i) for i in data["inputs"]),
            ops=tuple(
                Op(o["op"], tuple(o["inputs"]), o["name"], dict(o["params"])) for o in data["ops"]
            ),
            **{
                k: (tuple(v) if k == "frames" and v is not None else v)
                for k, v in data.items()
                if k not in ("inputs", "ops")
            },
        )

    def with_paths(self, place: Callable[[str, str], str]) -> CompSpec:
        """The spec with every path put through ``place(path, what)`` (absolute, confined)."""

        def moved(path: str | None, what: str) -> str | None:
            return None if path is None else place(path, what)

        return replace(
            self,
            inputs=tuple(replace(i, path=moved(i.path, f"input {i.name}")) for i in self.inputs),
            output=place(self.output, "output"),
            preview=moved(self.preview, "preview"),
            contact_sheet=moved(self.contact_sheet, "contact sheet"),
            movie=moved(self.movie, "movie"),
        )

    @property
    def outputs(self) -> list[str]:
        """The paths the job writes, for checks that they can be written."""
        return [p for p in (self.output, self.preview, self.contact_sheet, self.movie) if p]


def read_toml(path: Path) -> dict[str, Any]:
    """A spec file's contents, or one line saying why it cannot be read."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FarmError(f"comp spec {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FarmError(f"cannot read the comp spec {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise FarmError(f"comp spec {path} is not valid TOML: {error}") from None


def absolute_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The spec's tables with every relative path made absolute from ``base`` (the submitter's
    working folder): a server then reads and writes what the user named."""

    def moved(table: Any, key: str) -> None:
        if isinstance(table, dict) and isinstance(table.get(key), str) and "\x00" not in table[key]:
            table[key] = str(base / Path(table[key]).expanduser())

    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    inputs = data.get("inputs")
    if isinstance(inputs, dict):
        data["inputs"] = {k: dict(v) if isinstance(v, dict) else v for k, v in inputs.items()}
        for table in data["inputs"].values():
            moved(table, "path")
    for key in ("path", "preview"):
        moved(data.get("output"), key)
    for key in ("contact_sheet", "movie"):
        moved(data.get("review"), key)
    return data


def _table(data: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FarmError(f"{where} must be a table")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise FarmError(
            f"{where} has an unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return data


def _value(data: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = data.get(key)
    if value is None:  # absent (or JSON's null): the default
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise FarmError(f"{where}.{key} must be {_KIND_WORDS[kind]}, got {value!r}")
    return value


_KIND_WORDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _pattern(path: str, where: str, suffixes: tuple[str, ...]) -> str:
    if not path.strip():
        raise FarmError(f"{where} is empty")
    if "\x00" in path:
        raise FarmError(f"{where} {path!r} contains a NUL character")
    if Path(path).suffix.lower() not in suffixes:
        raise FarmError(f"{where} {path!r} must end in {' or '.join(suffixes)}")
    return path


def parse(data: dict[str, Any]) -> CompSpec:
    """Check a spec (a TOML file's tables, or the same as JSON) without reading any image."""
    top = _table(
        data,
        "the comp spec",
        {"frames", "config", "working_space", "inputs", "ops", "output", "review", "retries"},
    )
    config_name = _value(top, "config", str, "spec") or color.default_config_name()
    config = color.load_config(config_name)
    working = _value(top, "working_space", str, "spec") or color.scene_linear(config)
    color.check_space(config, working)
    frames_text = _value(top, "frames", str, "spec")
    frames = tuple(parse_frames(frames_text)) if frames_text is not None else None
    retries = _value(top, "retries", int, "spec", 2)
    if not 0 <= retries <= 100:
        raise FarmError(f"retries must be between 0 and 100, got {retries}")

    inputs = _inputs(top.get("inputs"), config)
    ops = _ops(top.get("ops", []), [i.name for i in inputs], config)

    out = _table(
        top.get("output"),
        "[output]",
        {"path", "colorspace", "depth", "compression", "preview", "display", "view"},
    )
    output = _pattern(_value(out, "path", str, "output") or "", "output.path", (".exr",))
    out_space = _value(out, "colorspace", str, "output") or working
    color.check_space(config, out_space)
    depth = _value(out, "depth", str, "output", "half")
    if depth not in DEPTHS:
        raise FarmError(f"output.depth must be half or float, got {depth!r}")
    compression = _value(out, "compression", str, "output", "zip").lower()
    preview = _value(out, "preview", str, "output")
    display = _value(out, "display", str, "output")
    view = _value(out, "view", str, "output")
    if preview is None and (display or view):
        raise FarmError("output.display and output.view need output.preview (the 8-bit preview)")
    if preview is not None:
        _pattern(preview, "output.preview", PREVIEW_TYPES)
        display = display or config.getDefaultDisplay()
        view = view or config.getDefaultView(display)
        color.check_view(config, display, view)

    review = _table(top.get("review", {}), "[review]", {"contact_sheet", "movie", "fps"})
    sheet = _value(review, "contact_sheet", str, "review")
    movie = _value(review, "movie", str, "review")
    fps = _value(review, "fps", float, "review", 24.0)
    if (sheet or movie) and preview is None:
        raise FarmError("[review] is made from the previews: give output.preview too")
    if sheet is not None:
        _pattern(sheet, "review.contact_sheet", PREVIEW_TYPES)
    if movie is not None:
        _pattern(movie, "review.movie", (".mp4",))
    if not 1 <= fps <= 240:
        raise FarmError(f"review.fps must be between 1 and 240, got {fps:g}")
    for path, what in ((output, "output.path"), (preview, "output.preview")):
        if path is not None and "#" not in path and (frames is None or len(frames) > 1):
            raise FarmError(f"{what} {path!r} needs #### where the frame number goes")

    spec = CompSpec(
        inputs=inputs,
        ops=ops,
        output=output,
        config=config_name,
        working=working,
        output_colorspace=out_space,
        depth=depth,
        compression=compression,
        preview=preview,
        display=display,
        view=view,
        frames=frames,
        contact_sheet=sheet,
        movie=movie,
        fps=fps,
        retries=retries,
    )
    _check_spaces(spec)
    return spec


def _inputs(data: Any, config: Any) -> tuple[Input, ...]:
    if not isinstance(data, dict) or not data:
        raise FarmError(
            "the comp spec needs [inputs.NAME] tables, each with a path (or after = true)"
        )
    inputs = []
    for name, table in data.items():
        where = f"[inputs.{name}]"
        if not NAME.match(name):
            raise FarmError(f"{where}: a name is letters, digits and _, not starting with a digit")
        table = _table(table, where, {"path", "after", "layer", "colorspace"})
        path = _value(table, "path", str, f"inputs.{name}")
        after = _value(table, "after", bool, f"inputs.{name}", False)
        if (path is None) != bool(after):
            raise FarmError(
                f"{where} needs either path = '…####.exr' or after = true (the frames of the "
                "job this comp runs after), not both"
            )
        if path is not None:
            _pattern(path, f"inputs.{name}.path", (".exr", *PREVIEW_TYPES, ".tif", ".tiff"))
        space = _value(table, "colorspace", str, f"inputs.{name}")
        if space is not None:
            color.check_space(config, space)
        layer = _value(table, "layer", str, f"inputs.{name}")
        inputs.append(Input(name, path, layer, space))
    return tuple(inputs)


def _ops(data: Any, names: list[str], config: Any) -> tuple[Op, ...]:
    """The ops in order; an op's input defaults to the last result (first, the first input)."""
    if not isinstance(data, list):
        raise FarmError("ops must be a list of [[ops]] tables")
    ops: list[Op] = []
    previous = names[0]
    known = set(names)
    for index, table in enumerate(data, 1):
        where = f"op {index}"
        if not isinstance(table, dict) or not isinstance(table.get("op"), str):
            raise FarmError(f"{where} needs op = one of {', '.join(OPS)}")
        kind = table["op"]
        if kind not in OPS:
            raise FarmError(f"{where}: unknown op {kind!r} (known: {', '.join(OPS)})")
        fewest, most, types = OPS[kind]
        table = _table(table, f"{where} ({kind})", {"op", "inputs", "name", *types})
        given = table.get("inputs", [previous] if fewest == 1 else None)
        if not isinstance(given, list) or not all(isinstance(n, str) for n in given):
            raise FarmError(f"{where} ({kind}) needs inputs = a list of {fewest} image names")
        if not fewest <= len(given) <= most:
            count = str(fewest) if fewest == most else f"{fewest} to {most}"
            raise FarmError(f"{where} ({kind}) takes {count} inputs, got {len(given)}")
        for name in given:
            if name not in known:
                raise FarmError(
                    f"{where} ({kind}): no image {name!r} before it (have: {', '.join(sorted(known))})"
                )
        params = {k: _value(table, k, t, f"{where}") for k, t in types.items() if k in table}
        missing = [k for k in REQUIRED.get(kind, ()) if k not in params]
        if missing:
            raise FarmError(f"{where} ({kind}) needs {missing[0]}")
        _check_params(kind, params, where, config)
        name = _value(table, "name", str, where) or f"op{index}"
        if not NAME.match(name) or name in known:
            raise FarmError(f"{where}: name {name!r} is taken or not a plain name")
        ops.append(Op(kind, tuple(given), name, params))
        known.add(name)
        previous = name
    return tuple(ops)


def _check_params(kind: str, params: dict[str, Any], where: str, config: Any) -> None:
    for key in ("width", "height"):
        if key in params and not 1 <= params[key] <= MAX_SIZE:
            raise FarmError(f"{where} ({kind}): {key} must be between 1 and {MAX_SIZE}")
    for key in ("x", "y"):
        if params.get(key, 0) < 0:
            raise FarmError(f"{where} ({kind}): {key} must be at least 0")
    if "exposure" in params and not -32 <= params["exposure"] <= 32:
        raise FarmError(f"{where} (grade): exposure is in stops, between -32 and 32")
    if "saturation" in params and not 0 <= params["saturation"] <= 16:
        raise FarmError(f"{where} (grade): saturation must be between 0 and 16")
    if kind == "convert":
        color.check_space(config, params["to"])


def _check_spaces(spec: CompSpec) -> None:
    """Images merged by an op must be in one colour space: a convert between is the user's call."""
    for op in spec.ops:
        if op.op in ("over", "add"):
            spaces = {spec.space_of(n) for n in op.inputs}
            if len(spaces) > 1:
                raise FarmError(
                    f"{op.op} {op.name}: its inputs are in different colour spaces "
                    f"({', '.join(sorted(spaces))}); convert one first"
                )


# The files: what an image's frames hold, checked before any frame runs.


@dataclass(frozen=True)
class Source:
    """An input as found on disk: its pattern, size and channels, and which frames it has."""

    name: str
    pattern: str
    width: int
    height: int
    channels: tuple[str, ...]  # the file's channels to read, in R, G, B(, A) order
    colorspace: str
    straight_alpha: bool  # 8/16-bit files store straight alpha: premultiplied after conversion
    still: bool


@dataclass(frozen=True)
class CompPlan:
    """A comp checked against its files: the frames to make and where each input's pixels are."""

    spec: CompSpec
    frames: tuple[int, ...]
    sources: tuple[Source, ...]
    width: int  # the result's size
    height: int

    def as_json(self) -> dict[str, Any]:
        return {
            "frames": list(self.frames),
            "sources": [s.__dict__ | {"channels": list(s.channels)} for s in self.sources],
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, spec: CompSpec, data: dict[str, Any]) -> CompPlan:
        sources = tuple(Source(**{**s, "channels": tuple(s["channels"])}) for s in data["sources"])
        return cls(spec, tuple(data["frames"]), sources, data["width"], data["height"])

    def output(self, frame: int) -> Path:
        return OutputPattern(self.spec.output).path(frame)

    def preview(self, frame: int) -> Path | None:
        return OutputPattern(self.spec.preview).path(frame) if self.spec.preview else None


def files_of(pattern: str) -> list[Path]:
    """The files a path names on this machine: a still's one file, a ``####`` sequence's frames."""
    if "#" not in Path(pattern).name:
        return [Path(pattern)] if Path(pattern).is_file() else []
    return [OutputPattern(pattern).path(frame) for frame in _frames_on_disk(pattern)]


def _frames_on_disk(pattern: str) -> list[int]:
    """The frame numbers a ``####`` pattern has files for."""
    path = Path(pattern)
    match = list(re.finditer(r"#+", path.name))
    if not match:
        return []
    last = match[-1]
    head, tail = re.escape(path.name[: last.start()]), re.escape(path.name[last.end() :])
    number = re.compile(f"^{head}(-?\\d+){tail}$")
    if not path.parent.is_dir():
        return []
    found = (number.match(entry.name) for entry in path.parent.iterdir())
    return sorted(int(m[1]) for m in found if m and len(m[1].lstrip("-")) >= len(last[0]))


def _span(frames: list[int]) -> str:
    if not frames:
        return "none"
    return (
        str(frames[0]) if len(frames) == 1 else f"{frames[0]}-{frames[-1]} ({len(frames)} frames)"
    )


def inspect(
    spec: CompSpec,
    header: Callable[[Path], tuple[int, int, tuple[str, ...], bool]],
    after: tuple[str, list[int]] | None = None,
) -> CompPlan:
    """Check the spec's inputs on disk and plan its frames; one line naming the first problem.

    ``header(path)`` reads an image's width, height, channel names and whether it is float (OIIO,
    given by the caller: pipelines read no pixels). ``after``: the output pattern and the frames
    written by the job this comp runs after, for inputs that take them.
    """
    patterns: dict[str, str] = {}
    available: dict[str, list[int]] = {}
    for source in spec.inputs:
        if source.after:
            if after is None:
                raise FarmError(
                    f"input {source.name} takes the frames of the job this comp runs after: "
                    "give --after JOB (or farm render … --comp SPEC)"
                )
            patterns[source.name], available[source.name] = after[0], sorted(after[1])
        else:
            assert source.path is not None
            patterns[source.name] = source.path
            if "#" in source.path:
                available[source.name] = _frames_on_disk(source.path)
    sequences = list(available)
    if spec.frames is not None:
        frames = list(spec.frames)
    elif sequences:
        frames = available[sequences[0]]
    else:
        raise FarmError("no input is a sequence (####): give frames = '1-24' in the spec")
    if not frames:
        name = sequences[0]
        raise FarmError(f"input {name} has no frames on disk at {patterns[name]}")
    for name in sequences:
        missing = sorted(set(frames) - set(available[name]))
        if missing:
            raise FarmError(
                f"input {name} ({patterns[name]}) lacks frame(s) {_span(missing)} of "
                f"{_span(frames)}; it has {_span(available[name])}"
            )
    sources = []
    for given in spec.inputs:
        pattern = OutputPattern(patterns[given.name])
        still = not pattern.has_frame
        for frame in [frames[0]] if still else frames:
            path = pattern.path(frame)
            try:
                width, height, channels, is_float = header(path)
            except OSError as error:
                raise FarmError(f"input {given.name}: cannot read {path}: {error}") from None
            if frame == frames[0]:
                first = (width, height, channels, is_float)
            elif (width, height) != first[:2]:
                raise FarmError(
                    f"input {given.name}: {path} is {width}×{height}, its frame {frames[0]} "
                    f"is {first[0]}×{first[1]}"
                )
        width, height, channels, is_float = first
        picked = _channels(given, channels, pattern.path(frames[0]))
        space = given.colorspace or (spec.working if is_float else color.srgb_texture(spec.config))
        straight = not is_float and len(picked) == 4
        sources.append(
            Source(given.name, pattern.pattern, width, height, picked, space, straight, still)
        )
    width, height = _result_size(spec, {s.name: (s.width, s.height) for s in sources})
    return CompPlan(spec, tuple(frames), tuple(sources), width, height)


def _channels(given: Input, channels: tuple[str, ...], path: Path) -> tuple[str, ...]:
    """The channels that make the input's R, G, B (and A): its layer's, or the plain ones."""
    prefix = f"{given.layer}." if given.layer else ""
    picked = tuple(f"{prefix}{c}" for c in "RGBA" if f"{prefix}{c}" in channels)
    if picked[:3] == tuple(f"{prefix}{c}" for c in "RGB"):
        return picked
    layers = sorted({c.rsplit(".", 1)[0] for c in channels if "." in c})
    if given.layer:
        raise FarmError(
            f"input {given.name}: {path} has no layer {given.layer!r} with R, G, B channels "
            f"(layers: {', '.join(layers) or 'none'})"
        )
    raise FarmError(
        f"input {given.name}: {path} has no R, G, B channels; give layer = one of "
        f"{', '.join(layers) or 'its layers'}"
    )


def _result_size(spec: CompSpec, sizes: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """Each op's size, checked where images meet: over and add need one size."""
    for op in spec.ops:
        first = sizes[op.inputs[0]]
        if op.op in ("over", "add"):
            for name in op.inputs[1:]:
                if sizes[name] != first:
                    a, b = first, sizes[name]
                    raise FarmError(
                        f"{op.op} {op.name}: {op.inputs[0]} is {a[0]}×{a[1]} but {name} is "
                        f"{b[0]}×{b[1]}; resize or crop one first"
                    )
            sizes[op.name] = first
        elif op.op == "crop":
            p = op.params
            x, y = p.get("x", 0), p.get("y", 0)
            if x + p["width"] > first[0] or y + p["height"] > first[1]:
                raise FarmError(
                    f"crop {op.name}: {p['width']}×{p['height']} at ({x}, {y}) leaves "
                    f"{op.inputs[0]}, which is {first[0]}×{first[1]}"
                )
            sizes[op.name] = (p["width"], p["height"])
        elif op.op == "resize":
            sizes[op.name] = (op.params["width"], op.params["height"])
        else:
            sizes[op.name] = first
    return sizes[spec.result]


def expand(plan: CompPlan) -> list[tuple[str, dict[str, Any]]]:
    """The job's tasks as (key, payload): one a frame, then the review if the spec asks one."""
    tasks: list[tuple[str, dict[str, Any]]] = [(f"c{f}", {"frames": [f]}) for f in plan.frames]
    if plan.spec.contact_sheet or plan.spec.movie:
        tasks.append((REVIEW, {}))
    return tasks


REVIEW = "review"
