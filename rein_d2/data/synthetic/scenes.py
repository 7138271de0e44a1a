"""Procedural street scenes: a random street layout (the world) seen by a moving camera.

A scene is drawn from a seeded generator, so one seed always gives the same street.
Objects live in world metres; traffic moves with the camera's travel (vehicles ahead at
the camera's speed, oncoming ones towards it, cyclists at half speed), which makes
consecutive video frames coherent and collision-free. Every street puts a tree, a lamp
post, a traffic sign, a traffic light, a pedestrian and a car 8-35 m ahead of the
camera, between buildings, sidewalks and sky, so a view shows about 15 classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import objects as ob
from .objects import ID
from .raster import BGR, Camera, Canvas, Part, Rendered

VISIBLE_DEPTH = 70.0  # metres of street generated ahead of a static camera
FOCAL_PER_WIDTH = 0.9  # focal length in pixels per image column (about 58 degrees field of view)
CAMERA_HEIGHT = 1.5
BIKE_LANE = 1.6  # metres at the right edge of the road, where two-wheelers ride

ROAD_GREY: BGR = (0.33, 0.33, 0.35)
SIDEWALK_GREY: BGR = (0.6, 0.62, 0.66)
TERRAIN: tuple[BGR, ...] = ((0.3, 0.55, 0.5), (0.25, 0.5, 0.4), (0.35, 0.6, 0.6))
MARKING: BGR = (0.85, 0.88, 0.9)
VEHICLES = ("car", "truck", "bus", "tram")
VEHICLE_SHARES = (0.72, 0.12, 0.11, 0.05)  # trams (class "train") are rare, as in Cityscapes

# Painter's layers, drawn in this order; within a layer, far items first.
GROUND, SKYLINE, FACADES, BARRIERS, OBJECTS = range(5)


@dataclass(frozen=True)
class Item:
    """Parts drawn together, at depth `z`, moving `motion` metres per metre the camera travels."""

    layer: int
    z: float
    parts: tuple[Part, ...]
    motion: float = 0.0


@dataclass(frozen=True)
class World:
    """A street: what is in it and how it is lit."""

    items: tuple[Item, ...]
    cam_x: float
    horizon: float  # fraction of the image height
    sky_top: BGR
    sky_horizon: BGR
    terrain: BGR


def _ground(rng: np.random.Generator, road: tuple[float, float], walks: tuple[float, float],
            end: float, lane_width: float, crossing: float) -> Item:
    """Sidewalks, road, curbs, lane markings and a zebra crossing, all on the ground plane."""
    left, right = road
    road_color, walk = ob.jitter(rng, ROAD_GREY, 0.15), ob.jitter(rng, SIDEWALK_GREY, 0.1)
    start, quads = -50.0, ob.ground_quads
    walks_quads = quads([left - walks[0], right], [left, right + walks[1]], start, end)
    curbs = quads([left - 0.25, right], [left, right + 0.25], start, end)
    parts = [Part(ID["sidewalk"], walk, walks_quads, ground=True),
             Part(ID["sidewalk"], ob.shade(walk, 1.2), curbs, ground=True),
             Part(ID["road"], road_color, quads(left, right, start, end), ground=True)]
    dash_z = np.arange(start, end, rng.uniform(8.0, 12.0))
    lines = np.arange(left + lane_width, -left + 0.1, lane_width)
    lx, lz = (a.ravel() for a in np.meshgrid(lines, dash_z))
    markings = [quads(lx - 0.08, lx + 0.08, lz, lz + 3.0),
                quads(right - BIKE_LANE - 0.1, right - BIKE_LANE + 0.05, start, end)]
    stripes = np.arange(left + 0.5, right - 0.4, 1.0)
    markings.append(quads(stripes, stripes + 0.5, crossing, crossing + 3.0))
    parts.append(Part(ID["road"], MARKING, np.concatenate(markings), ground=True))
    return Item(GROUND, 0.0, tuple(parts))


def _spaced(rng: np.random.Generator, start: float, end: float,
            gap: tuple[float, float]) -> np.ndarray:
    """Positions from `start` to `end` separated by random gaps."""
    steps = rng.uniform(*gap, size=int((end - start) / gap[0]) + 1)
    positions = start + np.cumsum(steps) - steps[0]
    return positions[positions < end]


def _roadside(rng: np.random.Generator, side: int, road_edge: float, walk: float, front: float,
              crossing: float, length: float, cam_x: float) -> list[Item]:
    """Buildings, barriers, trees, lamps, pedestrians, signs and a signal along one side."""
    curb = road_edge + 0.4
    items = []
    for z0 in _spaced(rng, -30.0, length + 60, (10.0, 30.0)):
        if rng.random() < 0.85:
            block, height = rng.uniform(8.0, 24.0), rng.uniform(6.0, 28.0)
            items.append(Item(FACADES, z0, tuple(ob.building(
                rng, side, front, z0, block, height, cam_x, CAMERA_HEIGHT))))
    for z0 in _spaced(rng, 0.0, length, (8.0, 30.0)):
        if rng.random() < 0.35:
            kind = ("wall", "fence", "vegetation")[rng.integers(3)]
            z1 = z0 + rng.uniform(4.0, 14.0)
            items.append(Item(BARRIERS, z0, tuple(ob.barrier(
                rng, kind, side, front - 0.4, z0, z1, cam_x, CAMERA_HEIGHT))))
    for z in _spaced(rng, 5.0, length, (7.0, 25.0)):
        if rng.random() < 0.6:
            items.append(Item(OBJECTS, z, tuple(ob.tree(rng, side * (road_edge + walk - 0.7), z))))
    for z in _spaced(rng, rng.uniform(0.0, 20.0), length, (20.0, 35.0)):
        items.append(Item(OBJECTS, z, tuple(ob.street_lamp(rng, side * curb, z, side))))
    for z in _spaced(rng, 3.0, length, (4.0, 20.0)):
        x = side * (road_edge + rng.uniform(0.6, max(0.7, walk - 0.5)))
        items.append(Item(OBJECTS, z, tuple(ob.person(rng, x, z))))
    for z in _spaced(rng, 10.0, length, (15.0, 40.0)):
        items.append(Item(OBJECTS, z, tuple(ob.traffic_sign(rng, side * (curb + 0.2), z))))
    if side > 0 or rng.random() < 0.5:
        z = crossing - 1.0
        items.append(Item(OBJECTS, z, tuple(ob.traffic_light(rng, side * curb, z, side))))
    return items


def build_world(rng: np.random.Generator, length: float = VISIBLE_DEPTH) -> World:
    """A random street with objects up to `length` m ahead (guaranteed classes 8-25 m ahead)."""
    lanes = int(rng.integers(1, 3))
    lane_width = rng.uniform(3.0, 3.8)
    road = (-lanes * lane_width, lanes * lane_width + BIKE_LANE)
    walks = (rng.uniform(1.8, 4.0), rng.uniform(1.8, 4.0))
    strips = tuple(rng.uniform(0.5, 4.0) if rng.random() < 0.5 else 0.0 for _ in range(2))
    fronts = (-road[0] + walks[0] + strips[0], road[1] + walks[1] + strips[1])
    cam_x = (int(rng.integers(lanes)) + 0.5) * lane_width
    crossing = rng.uniform(14.0, 35.0)

    items = [Item(SKYLINE, 300.0, tuple(ob.skyline(rng, 300.0)))]
    for index, side in enumerate((-1, 1)):
        items += _roadside(rng, side, abs(road[index]), walks[index], fronts[index], crossing,
                           length, cam_x)
    guaranteed = ((lambda z: ob.tree(rng, road[1] + walks[1] - 0.7, z)),
                  (lambda z: ob.street_lamp(rng, road[1] + 0.4, z, 1)),
                  (lambda z: ob.traffic_sign(rng, road[0] - 0.6, z)),
                  (lambda z: ob.person(rng, road[1] + rng.uniform(0.6, 1.4), z)))
    for make in guaranteed:
        z = rng.uniform(8.0, 25.0)
        items.append(Item(OBJECTS, z, tuple(make(z))))
    items += _traffic(rng, lanes, lane_width, cam_x, length)
    for z in _spaced(rng, rng.uniform(5.0, 30.0), length, (15.0, 40.0)):
        x = road[1] - BIKE_LANE / 2
        rider = ob.two_wheeler(rng, x, z, motor=bool(rng.random() < 0.4))
        items.append(Item(OBJECTS, z, tuple(rider), motion=0.5))
    items.append(_ground(rng, road, walks, length + 500.0, lane_width, crossing))
    return World(items=tuple(items), cam_x=cam_x, horizon=rng.uniform(0.4, 0.5),
                 sky_top=ob.jitter(rng, (0.85, 0.6, 0.35), 0.1),
                 sky_horizon=ob.jitter(rng, (0.95, 0.9, 0.85), 0.05), terrain=ob.pick(rng, TERRAIN))


def _traffic(rng: np.random.Generator, lanes: int, lane_width: float, cam_x: float,
             length: float) -> list[Item]:
    """Vehicles in every lane; the camera's lane always has a car 9-20 m ahead."""
    items = []
    for lane in range(-lanes, lanes):
        x = (lane + 0.5) * lane_width
        oncoming, own = x < 0, abs(x - cam_x) < 1e-6
        z = rng.uniform(9.0, 20.0) if own else rng.uniform(3.0, 25.0)
        kind = "car" if own else None
        while z < length:
            kind = kind or str(rng.choice(VEHICLES, p=VEHICLE_SHARES))
            if kind == "car":
                size, parts = 4.8, ob.car(rng, x, z, oncoming, cam_x, CAMERA_HEIGHT)
            elif kind == "truck":
                size, parts = 10.5, ob.truck(rng, x, z, oncoming, cam_x, CAMERA_HEIGHT)
            else:
                label, size = (ID["bus"], 12.0) if kind == "bus" else (ID["train"], 24.0)
                parts = ob.long_vehicle(rng, label, x, z, size, oncoming, cam_x, CAMERA_HEIGHT)
            items.append(Item(OBJECTS, z, tuple(parts), -1.0 if oncoming else 1.0))
            z += size + rng.uniform(6.0, 30.0)
            kind = None
    return items


def _moved(part: Part, shift: float) -> Part:
    return dataclasses.replace(part, polys=part.polys + np.array([0.0, 0.0, shift]))


def render_world(world: World, height: int, width: int, travelled: float = 0.0) -> Rendered:
    """The view after the camera (and the traffic) travelled `travelled` metres along the street."""
    camera = Camera(focal=FOCAL_PER_WIDTH * width, cx=width / 2, horizon=world.horizon * height,
                    x=world.cam_x, height=CAMERA_HEIGHT, z=travelled)
    canvas = Canvas(camera, height, width)
    rows = (np.arange(height) + 0.5)[:, None]
    sky = rows < camera.horizon
    t = np.clip(rows / max(camera.horizon, 1.0), 0, 1)[..., None]
    gradient = (1 - t) * np.asarray(world.sky_top) + t * np.asarray(world.sky_horizon)
    canvas.image[:] = np.where(sky[..., None], gradient, np.asarray(world.terrain))
    canvas.labels[:] = np.where(sky, ID["sky"], ID["terrain"])
    for item in sorted(world.items, key=lambda i: (i.layer, -(i.z + i.motion * travelled))):
        for part in item.parts:
            canvas.draw(_moved(part, item.motion * travelled) if item.motion else part)
    return canvas.result()


def render_scene(rng: np.random.Generator, height: int, width: int) -> Rendered:
    """One random street seen from its start."""
    return render_world(build_world(rng), height, width)
