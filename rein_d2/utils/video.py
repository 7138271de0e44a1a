"""Writing videos with OpenCV: codec fallback, frame checks, atomic commit.

OpenCV's VideoWriter fails silently twice over: an unsupported codec gives a writer that
is not opened, and a frame of the wrong size or type is dropped without an error. This
module turns both into clear errors and renames the finished file into place only when
every frame is written, so an interrupted run never leaves a truncated video behind.
"""
from __future__ import annotations

from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from ..errors import ReinD2Error
from .atomic import atomic_output

# Tried in order; mp4v works in the opencv-python wheels, the others in system builds.
DEFAULT_CODECS: tuple[str, ...] = ("mp4v", "avc1", "MJPG", "XVID")


class VideoCodecError(ReinD2Error, RuntimeError):
    """No codec can write the requested video file."""


def _open_writer(path: Path, fps: float, size: tuple[int, int],
                 codecs: tuple[str, ...]) -> tuple[cv2.VideoWriter, str] | None:
    """The first writer (and its codec) that opens for `path`; `size` is (width, height)."""
    for codec in codecs:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), size)
        if writer.isOpened():
            return writer, codec
        writer.release()
    return None


class VideoSink:
    """A video file being written: frames are checked, the file appears only on success.

    Use as a context manager; on an exception the partial file is deleted.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int],
                 codecs: tuple[str, ...] = DEFAULT_CODECS):
        if not fps > 0:
            raise ValueError(f"cannot write video {path} at {fps} frames per second; "
                             "give a positive frame rate")
        self.path = Path(path)
        self.size = size
        self.frames = 0
        # The file is committed exactly when the sink exits without an exception.
        self._output = atomic_output(self.path)
        opened = _open_writer(self._output.__enter__(), fps, size, codecs)
        if opened is None:
            error = VideoCodecError(
                f"cannot write video {self.path}: none of the codecs {', '.join(codecs)} works "
                f"for a '{self.path.suffix}' file in this OpenCV build. Write an .mp4 or .avi "
                "file, or install an OpenCV build with FFmpeg (pip install "
                "opencv-python-headless).")
            self._output.__exit__(VideoCodecError, error, None)
            raise error
        self._writer, self.codec = opened

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame of exactly the sink's size."""
        width, height = self.size
        if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"video {self.path} takes BGR uint8 frames of shape "
                             f"{(height, width, 3)}, got {frame.dtype} {frame.shape}")
        self._writer.write(frame)
        self.frames += 1

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._writer.release()
        self._output.__exit__(exc_type, exc, tb)
