"""Frames (RGB arrays) to a video file: ffmpeg (Debian's package), else imageio, else a GIF with Pillow.

Frames are streamed to the encoder, never held all at once (a GIF excepted: Pillow writes it in one
go). libx264 with yuv420p needs even dimensions, and flatland's frames can be odd (479x479), so
frames are padded by one pixel where needed. The file is written under a temporary name and renamed
when complete: no half-written video is ever at the final path.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

FPS = 7  # flatland's own movies (aicrowd_helpers.generate_movie_from_frames)
FFMPEG_MISSING = "ffmpeg not found (Debian: apt-get install ffmpeg; or pip install imageio[ffmpeg])"


class VideoError(RuntimeError):
    """The frames could not be encoded; the message is one line."""


@dataclass(frozen=True)
class Video:
    path: Path
    frames: int
    note: str | None = None  # e.g. why a GIF was written instead of the mp4 asked for


def _even(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    if height % 2 == 0 and width % 2 == 0:
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _rgb(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for frame in frames:
        frame = np.asarray(frame)
        yield np.ascontiguousarray(frame[:, :, :3] if frame.ndim == 3 else np.stack([frame] * 3, axis=-1),
                                   dtype=np.uint8)


def encode(frames: Iterable[np.ndarray], out: Path, fmt: str = "mp4", fps: int = FPS) -> Video:
    """Encode `frames` to `out` (its suffix is set from `fmt`); with mp4 and no encoder, a GIF instead."""
    out = Path(out).with_suffix(f".{fmt}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg:
            return _ffmpeg(ffmpeg, frames, out, fps)
        try:
            import imageio.v2 as imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            video = _gif(frames, out.with_suffix(".gif"), fps)
            return Video(video.path, video.frames, f"{FFMPEG_MISSING}: wrote a GIF instead ({video.path})")
        return _imageio(frames, out, fps)
    if fmt == "gif":
        return _gif(frames, out, fps)
    raise VideoError(f"unknown video format {fmt!r} (mp4 or gif)")


def _partial(out: Path) -> Path:
    return out.with_name(f".{out.stem}.partial{out.suffix}")


def _ffmpeg(ffmpeg: str, frames: Iterable[np.ndarray], out: Path, fps: int) -> Video:
    frames = (_even(f) for f in _rgb(frames))
    first = next(frames, None)
    if first is None:
        raise VideoError("no frames to encode")
    height, width = first.shape[:2]
    tmp = _partial(out)
    command = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(fps), "-i", "-", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               str(tmp)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    count, finished = 0, False
    try:
        for frame in itertools.chain([first], frames):
            process.stdin.write(frame.tobytes())
            count += 1
        finished = True
    except BrokenPipeError:
        finished = True  # ffmpeg stopped reading: its exit code says why
    finally:
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        error = process.stderr.read().decode(errors="replace").strip()
        process.wait()
        if not finished:  # the frames failed (an exception is on its way): leave nothing behind
            tmp.unlink(missing_ok=True)
    if process.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise VideoError(f"ffmpeg failed: {error.splitlines()[-1] if error else f'exit code {process.returncode}'}")
    tmp.rename(out)
    return Video(out, count)


def _imageio(frames: Iterable[np.ndarray], out: Path, fps: int) -> Video:
    import imageio.v2 as imageio

    tmp = _partial(out)
    count = 0
    with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                            macro_block_size=1) as writer:
        for frame in _rgb(frames):
            writer.append_data(_even(frame))
            count += 1
    tmp.rename(out)
    return Video(out, count)


def _gif(frames: Iterable[np.ndarray], out: Path, fps: int) -> Video:
    """Pillow's GIF (identical consecutive frames are merged into one longer frame by Pillow)."""
    from PIL import Image

    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in _rgb(frames)]
    if not images:
        raise VideoError("no frames to encode")
    tmp = _partial(out)
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    tmp.rename(out)
    return Video(out, len(images))
