"""A short dash-cam video of a synthetic street, for trying the demo without real footage."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...utils.video import VideoSink
from .domains import domain_code, stylise
from .generate import HEIGHT, SCENE_SETS, WIDTH
from .scenes import VISIBLE_DEPTH, build_world, render_world


def make_synthetic_video(path: str | Path, domain: str = "source", frames: int = 48,
                         fps: float = 12.0, height: int = HEIGHT, width: int = WIDTH, seed: int = 0,
                         speed: float = 8.0) -> Path:
    """Write a video of a camera driving `speed` m/s along one street, in `domain`'s style.

    Every frame views the same world from a little further along, so frames are coherent;
    weather and noise effects are drawn afresh per frame, like real rain or sensor noise.
    """
    if frames < 1:
        raise ValueError(f"a synthetic video needs at least one frame, got frames={frames}")
    world = build_world(np.random.default_rng([seed, SCENE_SETS["video"]]),
                        length=VISIBLE_DEPTH + 2 * speed * frames / fps)
    path = Path(path)
    with VideoSink(path, fps, (width, height)) as sink:
        for index in tqdm(range(frames), desc=f"rendering {path.name}", unit="frame"):
            view = render_world(world, height, width, travelled=index * speed / fps)
            rng = np.random.default_rng([seed, SCENE_SETS["video"], index, domain_code(domain)])
            sink.write(stylise(view, domain, rng))
    return path
