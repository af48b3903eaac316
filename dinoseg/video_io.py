"""Reading videos frame by frame: a directory of frame images or a video file (mp4 and friends).

  video = open_video("clip/")          # or "clip.mp4"
  video.name, video.num_frames, video.size   # (height, width) of every frame
  for index, name, frame in video.frames():  # (H, W, 3) uint8 RGB, decoded one at a time
    ...
  for start, names, frames in video.windows(10):  # (n <= 10, H, W, 3) uint8, lazily
    ...

A long video is never held in memory: frames are decoded when iterated (and again on a second pass).

- **Frames directory**: the image files of the directory (`dinoseg.predict.IMAGE_SUFFIXES`), sorted by
  name, are the frames. Opening reads every file's header (PIL, no decoding), so a frame that is missing,
  not an image, or of another size than the first frame is a one-line `UserValueError` naming it before
  any frame is processed. A frame whose header is fine but whose data is corrupt (truncated) fails the
  same way when it is decoded. Frames are never skipped: a video's results need one mask per frame (the
  LV-VIS / YouTube-VIS results format), so a dropped frame would shift every later one.
- **Video files** (`VIDEO_SUFFIXES`): decoded with PyAV (`pip install av`; its wheels bundle ffmpeg) or,
  if that is not installed, imageio with imageio-ffmpeg (`pip install imageio imageio-ffmpeg`). Without
  either, opening one is a one-line `UserValueError` naming the package to install; frames directories
  always work. The frame count and size come from a first decoding pass (frames are not kept).

`list_videos(path)`: a video file or frames directory is one video; a directory of frames directories
and / or video files is several (sorted by name).
"""
import importlib.util
import logging
import os
import pathlib
from typing import Iterator

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
READER_HINT = "pip install av (PyAV, bundles ffmpeg) or pip install imageio imageio-ffmpeg"


class UnreadableFrameError(UserValueError):
  """A frame that cannot be read: missing, not an image, corrupt, or of another size than the video's."""


def _frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _decode(path: pathlib.Path) -> np.ndarray:
  from dinoseg.data_pipelines import schema  # noqa: PLC0415
  try:
    return schema.decode_image(path.read_bytes())
  except FileNotFoundError:
    raise UnreadableFrameError(f"frame {path} is missing (it was removed after the video was opened)") from None
  except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError, ...
    raise UnreadableFrameError(f"frame {path} is not a readable image ({type(e).__name__}: {e})") from None


def _header_size(path: pathlib.Path) -> tuple[int, int]:
  """(height, width) from the file's header (EXIF orientation applied, as `decode_image` does)."""
  from PIL import Image  # noqa: PLC0415
  try:
    with Image.open(path) as im:
      w, h = im.size
      if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
        h, w = w, h
      return int(h), int(w)
  except Exception as e:  # noqa: BLE001
    raise UnreadableFrameError(f"frame {path} is not a readable image ({type(e).__name__}: {e})") from None


class Video:
  """A video's frames, decoded lazily (module docstring).

  Attributes:
    path: the frames directory or video file. name: its file name (outputs are named after it).
    frame_names: the name of every frame (the image file names, or "00000".. for a video file).
    size: (height, width) of every frame.
  """

  def __init__(self, path: pathlib.Path, frame_names: list[str], size: tuple[int, int]):
    self.path = path
    self.name = path.name
    self.frame_names = frame_names
    self.size = size

  @property
  def num_frames(self) -> int:
    return len(self.frame_names)

  def frames(self) -> Iterator[tuple[int, str, np.ndarray]]:
    """Yields (index, frame name, (H, W, 3) uint8 RGB) one frame at a time."""
    raise NotImplementedError

  def windows(self, window_size: int) -> Iterator[tuple[int, list[str], np.ndarray]]:
    """Yields (first frame index, names, (n, H, W, 3) uint8) for consecutive windows of <= window_size frames."""
    if int(window_size) < 1:
      raise UserValueError(f"window_size must be >= 1, got {window_size}")
    names, frames, start = [], [], 0
    for index, name, frame in self.frames():
      if not frames:
        start = index
      names.append(name)
      frames.append(frame)
      if len(frames) == window_size:
        yield start, names, np.stack(frames)
        names, frames = [], []
    if frames:
      yield start, names, np.stack(frames)


class FramesDirectory(Video):
  """A directory of frame images (sorted by file name)."""

  def __init__(self, path: pathlib.Path):
    files = _frame_files(path)
    if not files:
      raise UserValueError(f"{path}: no frames ({', '.join(IMAGE_SUFFIXES)} files) in this directory")
    size = _header_size(files[0])
    for f in files[1:]:
      other = _header_size(f)
      if other != size:
        raise UnreadableFrameError(f"{path}: frame {f.name} is {other[0]}x{other[1]} but the first frame "
                                   f"{files[0].name} is {size[0]}x{size[1]}; all frames of a video must have one size")
    super().__init__(path, [f.name for f in files], size)
    self._files = files

  def frames(self):
    for i, f in enumerate(self._files):
      frame = _decode(f)
      if frame.shape[:2] != self.size:
        raise UnreadableFrameError(f"{self.path}: frame {f.name} decodes to {frame.shape[0]}x{frame.shape[1]}, "
                                   f"not the video's {self.size[0]}x{self.size[1]}")
      yield i, f.name, frame


def available_reader() -> str | None:
  """"av", "imageio" or None: the video-file reader that is installed."""
  if importlib.util.find_spec("av") is not None:
    return "av"
  if importlib.util.find_spec("imageio") is not None and importlib.util.find_spec("imageio_ffmpeg") is not None:
    return "imageio"
  return None


def _iter_video_file(path: pathlib.Path, reader: str) -> Iterator[np.ndarray]:
  try:
    if reader == "av":
      import av  # noqa: PLC0415
      with av.open(str(path)) as container:
        for frame in container.decode(video=0):
          yield np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
    else:
      import imageio.v3 as iio  # noqa: PLC0415
      for frame in iio.imiter(str(path), plugin="FFMPEG"):
        yield np.asarray(frame, np.uint8)[..., :3]
  except UserValueError:
    raise
  except Exception as e:  # noqa: BLE001  (decoder errors of either library)
    raise UnreadableFrameError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None


class VideoFile(Video):
  """A video file decoded with PyAV or imageio-ffmpeg (frames named 00000, 00001, ...)."""

  def __init__(self, path: pathlib.Path):
    reader = available_reader()
    if reader is None:
      raise UserValueError(f"{path}: reading video files needs a video reader ({READER_HINT}); "
                           "or pass a directory of frame images")
    self._reader = reader
    count, size = 0, None
    for frame in _iter_video_file(path, reader):  # one pass for the count and size; frames are not kept
      size = size or frame.shape[:2]
      count += 1
    if not count:
      raise UserValueError(f"{path}: the video has no frames")
    super().__init__(path, [f"{i:05d}" for i in range(count)], (int(size[0]), int(size[1])))

  def frames(self):
    for i, frame in enumerate(_iter_video_file(self.path, self._reader)):
      if i >= self.num_frames:
        break
      yield i, self.frame_names[i], frame


def open_video(path: str | os.PathLike) -> Video:
  """A frames directory or a video file (module docstring)."""
  path = pathlib.Path(path)
  if path.is_dir():
    return FramesDirectory(path)
  if path.is_file():
    if path.suffix.lower() in VIDEO_SUFFIXES:
      return VideoFile(path)
    raise UserValueError(f"{path}: not a video (expected a directory of frames or a {'/'.join(VIDEO_SUFFIXES)} file)")
  raise UserFileNotFoundError(f"no such video file or frames directory: {path}")


def list_videos(path: str | os.PathLike) -> list[pathlib.Path]:
  """The videos of `--input`: a video file or frames directory, or a directory of those (sorted by name).

  Raises:
    UserFileNotFoundError: no such path. UserValueError: a directory with neither frames nor videos.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise UserFileNotFoundError(f"--input: no such file or directory: {path}")
  if path.is_file() or _frame_files(path):
    return [path]
  videos = sorted(p for p in path.iterdir()
                  if (p.is_dir() and _frame_files(p)) or (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES))
  if not videos:
    raise UserValueError(f"--input {path}: no frames, frames directories or video files "
                         f"({'/'.join(VIDEO_SUFFIXES)}) in it")
  return videos


__all__ = ["Video", "FramesDirectory", "VideoFile", "UnreadableFrameError", "open_video", "list_videos",
           "available_reader", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "READER_HINT"]
