"""The Shapes domain: the one place for its palette, geometry and canonical caption.

Specified exactly so that any program can render a scene from a caption and read a scene back
from pixels: ``random_scene`` -> ``render`` / ``canonical_caption``, and back with ``analyze``
(pixels). Every other wording, and reading text back, is ``shapes_language``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
    "cyan": (40, 190, 200),
    "pink": (240, 120, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "plus")
SIZES: dict[str, float] = {"small": 0.08, "large": 0.14}  # half-extent as a fraction of the canvas
# Position names in reading order; the index is row * 3 + col of the 3x3 grid.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
MAX_OBJECTS = 3
SUPERSAMPLING = 4  # render at 4x and box-downsample, so edges are antialiased


@dataclass(frozen=True, order=True)
class ShapeObject:
    """One object of a scene. Ordering follows the reading order of its cell."""

    position: str
    size: str
    color: str
    shape: str

    def __post_init__(self) -> None:
        _check_value("position", self.position, POSITIONS)
        _check_value("size", self.size, SIZES)
        _check_value("color", self.color, COLORS)
        _check_value("shape", self.shape, SHAPES)

    @property
    def cell(self) -> tuple[int, int]:
        """(col, row) of the object's grid cell."""
        index = POSITIONS.index(self.position)
        return index % 3, index // 3


@dataclass(frozen=True)
class Scene:
    """A background and 1 to 3 objects in distinct cells, kept in reading order of their cells.

    The constructor sorts the objects, so two scenes with the same content compare equal however
    they were built.
    """

    background: str
    objects: tuple[ShapeObject, ...]

    def __post_init__(self) -> None:
        _check_value("background", self.background, BACKGROUNDS)
        ordered = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", ordered)
        if not 1 <= len(ordered) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(ordered)}")
        positions = [o.position for o in ordered]
        if len(set(positions)) != len(positions):
            raise ValueError(f"objects must be in distinct cells, got positions {positions}")

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {"size": o.size, "color": o.color, "shape": o.shape, "position": o.position}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        try:
            objects = tuple(ShapeObject(**obj) for obj in data["objects"])
            return cls(background=data["background"], objects=objects)
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a Shapes scene dict: {data!r} ({error})") from error


def _check_value(name: str, value: str, allowed: Sequence[str] | dict) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(allowed)}")


# ----------------------------------------------------------------------------------------------
# Sampling


def random_scene(rng: np.random.Generator) -> Scene:
    """Uniform background, 1..3 objects in distinct random cells, uniform attributes."""
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.choice(len(POSITIONS), size=count, replace=False)
    objects = tuple(
        ShapeObject(
            position=POSITIONS[int(cell)],
            size=str(rng.choice(list(SIZES))),
            color=str(rng.choice(list(COLORS))),
            shape=str(rng.choice(SHAPES)),
        )
        for cell in cells
    )
    return Scene(background=str(rng.choice(list(BACKGROUNDS))), objects=objects)


# ----------------------------------------------------------------------------------------------
# Geometry and rendering


def _object_mask(shape: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean coverage of sample points (xs, ys) by one object, per the exact geometry."""
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        # Apex (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r): half-width grows
        # linearly from 0 at the apex to r at the base.
        half_width = (dy + r) / 2.0
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= half_width)
    if shape == "plus":
        bar = r / 3.0
        return ((np.abs(dx) <= r) & (np.abs(dy) <= bar)) | ((np.abs(dx) <= bar) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _object_geometry(obj: ShapeObject, size: int) -> tuple[float, float, float]:
    col, row = obj.cell
    return (col + 0.5) * size / 3, (row + 0.5) * size / 3, SIZES[obj.size] * size


def _coverage(shape: str, cx: float, cy: float, r: float, size: int) -> tuple[np.ndarray, slice, slice]:
    """Fractional pixel coverage (0..1) of one object inside its bounding window of the canvas."""
    x0, x1 = max(0, int(np.floor(cx - r)) - 1), min(size, int(np.ceil(cx + r)) + 1)
    y0, y1 = max(0, int(np.floor(cy - r)) - 1), min(size, int(np.ceil(cy + r)) + 1)
    offsets = (np.arange(SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    mask = _object_mask(shape, cx, cy, r, xs[None, :], ys[:, None])
    coverage = mask.reshape(y1 - y0, SUPERSAMPLING, x1 - x0, SUPERSAMPLING).mean(axis=(1, 3))
    return coverage, slice(y0, y1), slice(x0, x1)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Render a scene as an RGB image of size x size pixels (4x supersampled, box-filtered)."""
    if size < 16:
        raise ValueError(f"Shapes images need at least 16 px, got {size}")
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        coverage, rows, cols = _coverage(obj.shape, *_object_geometry(obj, size), size)
        alpha = coverage[..., None]
        canvas[rows, cols] = canvas[rows, cols] * (1 - alpha) + np.asarray(COLORS[obj.color]) * alpha
    return Image.fromarray(np.rint(canvas).astype(np.uint8), mode="RGB")


RESAMPLING = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
              "bilinear": Image.Resampling.BILINEAR, "hamming": Image.Resampling.HAMMING}


@dataclass(frozen=True)
class Rendering:
    """Another renderer that follows the spec: ``supersampling``x then ``resample`` down, each
    object's centre and half-extent moved by up to ``jitter`` px (the spec's antialiasing and
    sub-pixel freedom)."""

    supersampling: int = SUPERSAMPLING
    resample: str = "box"
    jitter: float = 0.0


def render_with(scene: Scene, size: int, rendering: Rendering, rng: np.random.Generator | None = None) -> Image.Image:
    """``scene`` as ``rendering`` draws it (``rng`` draws the jitter)."""
    if rendering == Rendering():
        return render(scene, size)
    k = rendering.supersampling
    big = np.empty((size * k, size * k, 3), dtype=np.uint8)
    big[:] = BACKGROUNDS[scene.background]
    centers = np.arange(size * k) + 0.5
    for obj in scene.objects:
        cx, cy, r = _object_geometry(obj, size)
        if rendering.jitter:
            cx, cy, r = np.asarray([cx, cy, r]) + (rng or np.random.default_rng()).uniform(-1, 1, 3) * rendering.jitter
        mask = _object_mask(obj.shape, cx * k, cy * k, r * k, centers[None, :], centers[:, None])
        big[mask] = COLORS[obj.color]
    return Image.fromarray(big).resize((size, size), RESAMPLING[rendering.resample])


# ----------------------------------------------------------------------------------------------
# Reading a scene back from pixels


def _cell_window(position: str, size: int) -> tuple[slice, slice]:
    index = POSITIONS.index(position)
    col, row = index % 3, index // 3
    lo = lambda k: int(np.floor(k * size / 3))  # noqa: E731
    hi = lambda k: int(np.ceil((k + 1) * size / 3))  # noqa: E731
    return slice(lo(row), min(size, hi(row))), slice(lo(col), min(size, hi(col)))


@lru_cache(maxsize=8)
def _templates(size: int) -> dict[str, tuple[np.ndarray, list[tuple[str, str]]]]:
    """Per position: a stack of coverage maps of every (size, shape) in the cell window."""
    table = {}
    for position in POSITIONS:
        rows, cols = _cell_window(position, size)
        maps, labels = [], []
        for size_name in SIZES:
            for shape in SHAPES:
                cx, cy, r = _object_geometry(ShapeObject(position, size_name, "red", shape), size)
                full = np.zeros((size, size))
                coverage, r_sl, c_sl = _coverage(shape, cx, cy, r, size)
                full[r_sl, c_sl] = coverage
                maps.append(full[rows, cols])
                labels.append((size_name, shape))
        table[position] = (np.stack(maps), labels)
    return table


def _nearest(color: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - color, axis=1)
    return names[int(np.argmin(distances))]


def analyze(image: Image.Image | np.ndarray) -> Scene | None:
    """Read a scene back from pixels; None when no valid scene is visible (e.g. no object).

    The background is read from the border (objects never touch it). In each cell, pixels far
    from the background are the object; its color is the nearest palette color to their median,
    and its size and shape are the template (exact geometry at this resolution) that best matches
    the per-pixel coverage, so slightly blurry or noisy images (decoded codes) still read back.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[2] != 3:
        raise ValueError(f"analyze expects a square RGB image, got array shape {pixels.shape}")
    size = pixels.shape[0]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = _nearest(np.median(border, axis=0), BACKGROUNDS)
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    # Any object color is >= 86 RGB units from any background; a third of that flags foreground.
    min_pixels = 0.25 * (SIZES["small"] * size) ** 2
    objects = []
    for position, (maps, labels) in _templates(size).items():
        rows, cols = _cell_window(position, size)
        cell = pixels[rows, cols]
        distance = np.linalg.norm(cell - bg, axis=-1)
        core = distance > 60
        if core.sum() < min_pixels:
            continue
        color_name = _nearest(np.median(cell[core], axis=0), COLORS)
        direction = np.asarray(COLORS[color_name], dtype=np.float64) - bg
        alpha = np.clip(((cell - bg) @ direction) / (direction @ direction), 0.0, 1.0)
        errors = ((maps - alpha[None]) ** 2).sum(axis=(1, 2))
        size_name, shape = labels[int(np.argmin(errors))]
        objects.append(ShapeObject(position=position, size=size_name, color=color_name, shape=shape))
    if not 1 <= len(objects) <= MAX_OBJECTS:
        return None
    return Scene(background=background, objects=tuple(objects))


# ----------------------------------------------------------------------------------------------
# Captions


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def canonical_caption(scene: Scene) -> str:
    """The one caption that captioning produces: objects in reading order, then the background."""
    parts = [f"a {o.size} {o.color} {o.shape} at the {o.position}" for o in scene.objects]
    return f"{_join(parts)} on a {scene.background} background"
