"""Street objects as world polygons: buildings, vehicles, people, poles, trees, barriers.

Coordinates are metres: x to the right, y up from the ground, z away from the camera.
Billboard objects (people, poles, trees, cyclists) are drawn in one plane at their depth;
boxes (buildings, vehicles, walls) show the faces a camera at (cam_x, cam_h) can see.
"""
from __future__ import annotations

import numpy as np

from ..classes import CITYSCAPES_CLASSES
from .raster import BGR, Part

ID = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}

WARM_LIGHT: BGR = (0.55, 0.85, 1.0)
WHITE_LIGHT: BGR = (0.95, 0.97, 1.0)
RED_LIGHT: BGR = (0.1, 0.1, 1.0)
SIGNAL_LIGHTS: tuple[BGR, ...] = ((0.2, 0.2, 1.0), (0.1, 0.75, 1.0), (0.5, 1.0, 0.2))

# Base colours (BGR in [0, 1]); every instance gets a jittered variant.
FACADES: tuple[BGR, ...] = ((0.55, 0.62, 0.7), (0.45, 0.45, 0.48), (0.3, 0.35, 0.6),
                            (0.7, 0.75, 0.78), (0.4, 0.5, 0.55), (0.6, 0.55, 0.5))
GLASS: BGR = (0.35, 0.3, 0.25)
LEAVES: tuple[BGR, ...] = ((0.15, 0.45, 0.25), (0.1, 0.35, 0.2), (0.2, 0.5, 0.35), (0.12, 0.4, 0.4))
BARK: BGR = (0.15, 0.25, 0.35)
METAL: BGR = (0.45, 0.45, 0.45)
SHIRTS: tuple[BGR, ...] = ((0.2, 0.2, 0.8), (0.7, 0.3, 0.1), (0.2, 0.6, 0.2), (0.85, 0.85, 0.85),
                           (0.1, 0.1, 0.1), (0.2, 0.7, 0.9))
TROUSERS: tuple[BGR, ...] = ((0.35, 0.2, 0.1), (0.15, 0.15, 0.15), (0.45, 0.45, 0.5))
SKIN: tuple[BGR, ...] = ((0.6, 0.7, 0.9), (0.35, 0.5, 0.7), (0.2, 0.3, 0.45))
PAINT: tuple[BGR, ...] = ((0.1, 0.1, 0.6), (0.6, 0.25, 0.1), (0.85, 0.85, 0.85), (0.15, 0.15, 0.15),
                          (0.5, 0.5, 0.5), (0.15, 0.45, 0.7), (0.3, 0.15, 0.1))


def shade(color: BGR, factor: float) -> BGR:
    """`color` lit by `factor` (faces turned from the light are darker)."""
    return tuple(float(min(1.0, c * factor)) for c in color)


def jitter(rng: np.random.Generator, color: BGR, amount: float = 0.08) -> BGR:
    """`color` with a small random brightness and tint change, so instances differ."""
    scaled = np.asarray(color) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0, amount / 3, 3)
    return tuple(float(c) for c in np.clip(scaled, 0.0, 1.0))


def pick(rng: np.random.Generator, colors: tuple[BGR, ...]) -> BGR:
    return jitter(rng, colors[rng.integers(len(colors))])


def rect(x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray:
    """A billboard rectangle facing the camera, as (1, 4, 3)."""
    return np.array([[[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]], np.float64)


def ellipse(cx: float, cy: float, rx: float, ry: float, z: float, n: int = 16) -> np.ndarray:
    """A billboard ellipse as an n-gon, (1, n, 3)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t), np.full(n, z)], -1)[None]


def disc_yz(x: float, cy: float, cz: float, r: float, n: int = 12) -> np.ndarray:
    """A disc in the plane x = const (a wheel seen on a vehicle's side), (1, n, 3)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.full(n, x), cy + r * np.sin(t), cz + r * np.cos(t)], -1)[None]


def ground_quads(x0: np.ndarray, x1: np.ndarray, z0: np.ndarray, z1: np.ndarray) -> np.ndarray:
    """Rectangles lying on the ground, (n, 4, 3), from arrays of their extents."""
    x0, x1, z0, z1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, np.float64))
                                           for a in (x0, x1, z0, z1)))
    zero = np.zeros_like(x0)
    corners = [(x0, z0), (x1, z0), (x1, z1), (x0, z1)]
    return np.stack([np.stack([x, zero, z], -1) for x, z in corners], 1)


def box(label: int, color: BGR, x: tuple[float, float], y: tuple[float, float],
        z: tuple[float, float], cam_x: float, cam_h: float) -> list[Part]:
    """The faces of an axis-aligned box visible from the camera: back, one side, top."""
    (x0, x1), (y0, y1), (z0, z1) = x, y, z
    parts = []
    side_x = x0 if cam_x < x0 else x1 if cam_x > x1 else None
    if side_x is not None:
        side = [[side_x, y0, z0], [side_x, y0, z1], [side_x, y1, z1], [side_x, y1, z0]]
        parts.append(Part(label, shade(color, 0.75), np.array([side], np.float64)))
    if cam_h > y1:
        top = [[x0, y1, z0], [x1, y1, z0], [x1, y1, z1], [x0, y1, z1]]
        parts.append(Part(label, shade(color, 1.15), np.array([top], np.float64)))
    parts.append(Part(label, color, rect(x0, x1, y0, y1, z0)))
    return parts


def building(rng: np.random.Generator, side: int, street_x: float, z0: float, length: float,
             height: float, cam_x: float, cam_h: float) -> list[Part]:
    """A block whose facade is the plane x = side * street_x, with a grid of windows."""
    depth = 15.0
    xs = (street_x, street_x + depth) if side > 0 else (-street_x - depth, -street_x)
    parts = box(ID["building"], pick(rng, FACADES), xs, (0.0, height), (z0, z0 + length),
                cam_x, cam_h)
    spacing = rng.uniform(2.5, 4.0)
    floors = np.arange(2.0, height - 1.9, 3.0)
    columns = np.arange(z0 + 1.0, z0 + length - 1.9, spacing)
    fy, fz = (a.ravel() for a in np.meshgrid(floors, columns))
    x = np.full_like(fy, side * street_x)
    windows = np.stack([np.stack([x, fy, fz], -1), np.stack([x, fy, fz + 1.2], -1),
                        np.stack([x, fy + 1.4, fz + 1.2], -1), np.stack([x, fy + 1.4, fz], -1)], 1)
    lit = rng.random(len(windows)) < rng.uniform(0.2, 0.6)
    glass = jitter(rng, GLASS)
    parts.append(Part(ID["building"], glass, windows[~lit]))
    parts.append(Part(ID["building"], glass, windows[lit], light=WARM_LIGHT))
    return parts


def skyline(rng: np.random.Generator, z: float) -> list[Part]:
    """Distant buildings and tree lines just above the horizon."""
    parts = []
    for x0 in np.arange(-300.0, 300.0, 35.0):
        if rng.random() < 0.7:
            width, height = rng.uniform(12, 35), rng.uniform(8, 60)
            parts.append(Part(ID["building"], pick(rng, FACADES),
                              rect(x0, x0 + width, 0, height, z)))
        else:
            parts.append(Part(ID["vegetation"], pick(rng, LEAVES),
                              ellipse(x0 + 15, 0, 20, rng.uniform(8, 18), z)))
    return parts


def tree(rng: np.random.Generator, x: float, z: float) -> list[Part]:
    """A trunk and a crown of three overlapping ellipses (all vegetation, as in Cityscapes)."""
    height, radius = rng.uniform(4.5, 9.0), rng.uniform(1.3, 2.8)
    crown = pick(rng, LEAVES)
    trunk = rect(x - 0.15, x + 0.15, 0, height * 0.6, z)
    parts = [Part(ID["vegetation"], jitter(rng, BARK), trunk)]
    for dx, dy, scale in ((0.0, 0.0, 1.0), (-0.5, -0.4, 0.7), (0.5, -0.3, 0.75)):
        parts.append(Part(ID["vegetation"], shade(crown, rng.uniform(0.85, 1.15)),
                          ellipse(x + dx * radius, height - radius + dy * radius,
                                  radius * scale, radius * 1.1 * scale, z)))
    return parts


def street_lamp(rng: np.random.Generator, x: float, z: float, side: int) -> list[Part]:
    """A lamp post whose arm reaches over the road (towards -side)."""
    height, reach = rng.uniform(6.0, 8.0), rng.uniform(1.0, 2.0)
    metal = jitter(rng, METAL)
    arm_end = x - side * reach
    arm = rect(min(x, arm_end), max(x, arm_end), height - 0.1, height + 0.05, z)
    lamp = rect(arm_end - 0.3, arm_end + 0.3, height - 0.25, height - 0.05, z)
    return [Part(ID["pole"], metal, rect(x - 0.08, x + 0.08, 0, height, z)),
            Part(ID["pole"], metal, arm),
            Part(ID["pole"], (0.8, 0.8, 0.8), lamp, light=WARM_LIGHT)]


def traffic_light(rng: np.random.Generator, x: float, z: float, side: int) -> list[Part]:
    """A signal on a post at the curb or hanging from a mast arm over the road."""
    metal = jitter(rng, METAL)
    if rng.random() < 0.5:
        top, head_x = rng.uniform(2.8, 3.6), x
        parts = [Part(ID["pole"], metal, rect(x - 0.08, x + 0.08, 0, top, z))]
    else:
        top, head_x = rng.uniform(4.5, 5.5), x - side * rng.uniform(2.0, 3.5)
        arm = rect(min(x, head_x), max(x, head_x), top + 1.0, top + 1.15, z)
        parts = [Part(ID["pole"], metal, rect(x - 0.1, x + 0.1, 0, top + 1.2, z)),
                 Part(ID["pole"], metal, arm)]
    parts.append(Part(ID["traffic light"], (0.12, 0.12, 0.12),
                      rect(head_x - 0.18, head_x + 0.18, top, top + 0.95, z)))
    active = int(rng.integers(3))
    for i, lamp in enumerate(SIGNAL_LIGHTS):
        on = i == active
        parts.append(Part(ID["traffic light"], lamp if on else shade(lamp, 0.3),
                          ellipse(head_x, top + 0.78 - 0.3 * i, 0.1, 0.1, z, n=10),
                          light=lamp if on else None))
    return parts


def traffic_sign(rng: np.random.Generator, x: float, z: float) -> list[Part]:
    """A round, triangular or square sign plate on a thin post."""
    top = rng.uniform(2.0, 2.6)
    sign = ID["traffic sign"]
    parts = [Part(ID["pole"], jitter(rng, METAL), rect(x - 0.04, x + 0.04, 0, top, z))]
    shape = rng.integers(3)
    if shape == 0:
        parts += [Part(sign, (0.1, 0.1, 0.85), ellipse(x, top, 0.33, 0.33, z)),
                  Part(sign, (0.95, 0.95, 0.95), ellipse(x, top, 0.24, 0.24, z))]
    elif shape == 1:
        triangle = np.array([[[x - 0.38, top - 0.3, z], [x + 0.38, top - 0.3, z],
                              [x, top + 0.36, z]]])
        parts.append(Part(sign, (0.1, 0.1, 0.85), triangle))
    else:
        parts.append(Part(sign, (0.7, 0.35, 0.05), rect(x - 0.3, x + 0.3, top - 0.3, top + 0.3, z)))
    return parts


def person(rng: np.random.Generator, x: float, z: float, label: int = ID["person"],
           saddle: float = 0.0) -> list[Part]:
    """A standing pedestrian, or (with a `saddle` height) a rider seen from behind."""
    h = rng.uniform(1.55, 1.95)
    shirt, trousers, skin = pick(rng, SHIRTS), pick(rng, TROUSERS), pick(rng, SKIN)
    if saddle == 0.0:
        step = rng.uniform(0.0, 0.12)
        legs = np.concatenate([rect(x - 0.17 - step, x - 0.03 - step, 0, 0.48 * h, z),
                               rect(x + 0.03 + step, x + 0.17 + step, 0, 0.48 * h, z)])
        hips = 0.46 * h
    else:
        legs = np.concatenate([rect(x - 0.2, x - 0.07, saddle - 0.55, saddle + 0.05, z),
                               rect(x + 0.07, x + 0.2, saddle - 0.55, saddle + 0.05, z)])
        hips = saddle
    torso = hips + 0.36 * h
    arms = np.concatenate([rect(x - 0.3, x - 0.2, torso - 0.32 * h, torso, z),
                           rect(x + 0.2, x + 0.3, torso - 0.32 * h, torso, z)])
    return [Part(label, trousers, legs),
            Part(label, shirt, rect(x - 0.21, x + 0.21, hips, torso, z)),
            Part(label, shade(shirt, 0.85), arms),
            Part(label, skin, ellipse(x, torso + 0.1 * h, 0.1, 0.125, z, n=12))]


def two_wheeler(rng: np.random.Generator, x: float, z: float, motor: bool) -> list[Part]:
    """A bicycle or motorcycle with its rider, riding ahead of the camera (seen from behind)."""
    label = ID["motorcycle"] if motor else ID["bicycle"]
    frame = pick(rng, PAINT)
    bar, saddle, wheel, tyre = (0.4, 1.05, 0.62, 0.08) if motor else (0.28, 0.95, 0.68, 0.04)
    handlebar = rect(x - bar, x + bar, saddle + 0.05, saddle + 0.1, z + 1.1)
    parts = [Part(label, shade(frame, 0.6), handlebar)]
    parts += person(rng, x, z + 0.5, label=ID["rider"], saddle=saddle)
    if motor:
        tail_light = rect(x - 0.08, x + 0.08, 0.7, 0.8, z + 0.1)
        parts += [Part(label, frame, rect(x - 0.25, x + 0.25, 0.35, 0.85, z + 0.2)),
                  Part(label, (0.1, 0.1, 0.7), tail_light, light=RED_LIGHT)]
    parts.append(Part(label, (0.08, 0.08, 0.08), rect(x - tyre, x + tyre, 0, wheel, z)))
    return parts


def _wheels(x_side: float, z_centres: tuple[float, ...], radius: float, label: int) -> Part:
    return Part(label, (0.06, 0.06, 0.06),
                np.concatenate([disc_yz(x_side, radius, zc, radius) for zc in z_centres]))


def _lamps(label: int, x0: float, x1: float, y: float, z: float, oncoming: bool) -> Part:
    """Tail lights (red) or, for oncoming vehicles, head lights (white) on the near face."""
    light = WHITE_LIGHT if oncoming else RED_LIGHT
    color = (0.85, 0.85, 0.85) if oncoming else (0.1, 0.1, 0.7)
    polys = np.concatenate([rect(x0 + 0.05, x0 + 0.3, y, y + 0.15, z),
                            rect(x1 - 0.3, x1 - 0.05, y, y + 0.15, z)])
    return Part(label, color, polys, light=light)


def car(rng: np.random.Generator, x: float, z: float, oncoming: bool,
        cam_x: float, cam_h: float) -> list[Part]:
    """A body box with wheels and lamps, under a narrower glass cabin."""
    width, length = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.8)
    paint, label = pick(rng, PAINT), ID["car"]
    xs = (x - width / 2, x + width / 2)
    parts = box(label, paint, xs, (0.25, 1.0), (z, z + length), cam_x, cam_h)
    x_side = xs[0] if cam_x < xs[0] else xs[1]
    parts.append(_wheels(x_side, (z + 0.8, z + length - 0.8), 0.33, label))
    rear_tyres = np.concatenate([rect(xs[0] + 0.1, xs[0] + 0.35, 0, 0.3, z + 0.6),
                                 rect(xs[1] - 0.35, xs[1] - 0.1, 0, 0.3, z + 0.6)])
    parts.append(Part(label, (0.06, 0.06, 0.06), rear_tyres))
    parts += box(label, shade(GLASS, 0.9), (xs[0] + 0.12, xs[1] - 0.12),
                 (1.0, rng.uniform(1.4, 1.55)), (z + 0.9, z + length - 1.2), cam_x, cam_h)
    parts.append(_lamps(label, *xs, 0.75, z, oncoming))
    return parts


def truck(rng: np.random.Generator, x: float, z: float, oncoming: bool,
          cam_x: float, cam_h: float) -> list[Part]:
    """A cab and a taller cargo box; the cab leads, so it is the far box unless oncoming."""
    label, xs = ID["truck"], (x - 1.25, x + 1.25)
    cargo_len, cab_len = rng.uniform(5.0, 8.0), 2.2
    cab_z = (z, z + cab_len) if oncoming else (z + cargo_len, z + cargo_len + cab_len)
    cargo_z = (z + cab_len, z + cab_len + cargo_len) if oncoming else (z, z + cargo_len)
    cab = box(label, pick(rng, PAINT), xs, (0.4, 2.8), cab_z, cam_x, cam_h)
    cargo = box(label, pick(rng, PAINT), xs, (0.4, 3.6), cargo_z, cam_x, cam_h)
    x_side = xs[0] if cam_x < xs[0] else xs[1]
    wheels = _wheels(x_side, (z + 1.0, z + cab_len + cargo_len - 1.2), 0.5, label)
    lamps = _lamps(label, *xs, 0.7, z, oncoming)
    return (cargo + cab if oncoming else cab + cargo) + [wheels, lamps]


def long_vehicle(rng: np.random.Generator, label: int, x: float, z: float, length: float,
                 oncoming: bool, cam_x: float, cam_h: float) -> list[Part]:
    """A bus or a tram: a tall box with a band of windows along its visible side."""
    xs, height = (x - 1.28, x + 1.28), 3.2
    colors = ((0.1, 0.6, 0.9), (0.2, 0.2, 0.75), (0.85, 0.85, 0.85), (0.2, 0.55, 0.2))
    parts = box(label, pick(rng, colors), xs, (0.3, height), (z, z + length), cam_x, cam_h)
    x_side = xs[0] if cam_x < xs[0] else xs[1]
    band = np.array([[[x_side, 1.4, z + 0.5], [x_side, 1.4, z + length - 0.5],
                      [x_side, 2.7, z + length - 0.5], [x_side, 2.7, z + 0.5]]])
    parts.append(Part(label, GLASS, band, light=WARM_LIGHT))
    parts.append(Part(label, GLASS, rect(xs[0] + 0.2, xs[1] - 0.2, 1.5, 2.8, z)))
    if label == ID["bus"]:
        parts.append(_wheels(x_side, (z + 2.0, z + length - 2.5), 0.5, label))
    return parts + [_lamps(label, *xs, 0.6, z, oncoming)]


# kind -> (height range in metres, thickness, base colours)
BARRIERS: dict[str, tuple[tuple[float, float], float, tuple[BGR, ...]]] = {
    "wall": ((1.0, 2.5), 0.3, ((0.6, 0.6, 0.6), (0.45, 0.5, 0.55), (0.3, 0.35, 0.5))),
    "fence": ((1.0, 1.8), 0.08, ((0.55, 0.6, 0.65), (0.2, 0.3, 0.4), (0.7, 0.7, 0.7))),
    "vegetation": ((0.8, 1.5), 0.3, LEAVES),
}


def barrier(rng: np.random.Generator, kind: str, side: int, x: float, z0: float, z1: float,
            cam_x: float, cam_h: float) -> list[Part]:
    """A wall, fence or hedge (see BARRIERS) whose street-side face is at x = side * x."""
    heights, thick, colors = BARRIERS[kind]
    height, color = rng.uniform(*heights), pick(rng, colors)
    xs = (x, x + thick) if side > 0 else (-x - thick, -x)
    parts = box(ID[kind], color, xs, (0.0, height), (z0, z1), cam_x, cam_h)
    if kind == "fence":
        face = xs[0] if side > 0 else xs[1]
        rails = np.array([[[face, y, z0], [face, y, z1], [face, y + 0.08, z1], [face, y + 0.08, z0]]
                          for y in (0.3 * height, 0.85 * height)])
        parts.append(Part(ID["fence"], shade(color, 0.6), rails))
    return parts
