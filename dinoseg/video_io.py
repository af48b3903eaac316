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
- **Video files** (`VIDEO_SUFFIXES`): decoded with PyAV (`pip install av`, or `pip install dinoseg[video]`;
  its wheels bundle ffmpeg) or, if that is not installed, imageio with imageio-ffmpeg (`pip install imageio
  imageio-ffmpeg`). Without either, opening one is a one-line `UserValueError` naming the package to install;
  frames directories always work. Opening with PyAV reads the packets without decoding them (the frame count:
  the packets an edit list drops are not frames) and decodes the first frame (the size); the imageio reader
  decodes the video once to count its frames. `fps` is the stream's average frame rate (None when unknown).
  Frames are RGB uint8 as a player shows them: PyAV applies the stream's display matrix (`display_oriented`:
  rotations by multiples of 90 degrees and flips, as ffmpeg's autorotation; other angles are refused), the
  imageio reader gets ffmpeg's own autorotation. A file that is not a video, has no video stream or no frames,
  is truncated (fewer packets than its header lists, a packet cut short) or corrupt (a decoder error, or fewer
  frames decoding than its packets hold), or whose resolution changes mid-stream, is a one-line
  `UnreadableFrameError` (a `UserValueError`): at opening, or when the bad frame is reached.

`list_videos(path)`: a video file or frames directory is one video; a directory of frames directories
and / or video files is several (sorted by name).
"""
import contextlib
import importlib.util
import logging
import math
import os
import pathlib
from typing import Callable, Iterator, NamedTuple

import numpy as np

from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
READER_HINT = ("pip install av (PyAV, bundles ffmpeg; or pip install dinoseg[video]) "
               "or pip install imageio imageio-ffmpeg")


class UnreadableFrameError(UserValueError):
  """A frame or video file that cannot be read: missing, not an image / video, corrupt, truncated, empty, or a
  frame of another size than the video's."""


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
    window_size = int(window_size)
    if window_size < 1:
      raise UserValueError(f"window_size must be >= 1, got {window_size}")
    names, window, start = [], None, 0
    for index, name, frame in self.frames():
      if not names:  # a new array per window (the caller may keep it); frames are copied in as they decode
        start, window = index, np.empty((window_size, *frame.shape), frame.dtype)
      window[len(names)] = frame
      names.append(name)
      if len(names) == window_size:
        yield start, names, window
        names, window = [], None
    if names:
      yield start, names, window[:len(names)]


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


# ----------------------------------------------------------------------------- video files


@contextlib.contextmanager
def _video_errors(path: pathlib.Path):
  """Turns the readers' errors (missing file, not a video, decoder errors) into one-line UnreadableFrameErrors."""
  try:
    yield
  except UserError:
    raise
  except EOFError as e:  # av.EOFError is one: raised where ffmpeg needs more data than the file has
    raise UnreadableFrameError(f"{path}: the file ends early: an empty or truncated video ({type(e).__name__}: "
                               f"{e})") from None
  except Exception as e:  # noqa: BLE001  (av.FFmpegError subclasses, OSError, imageio's errors, ...)
    raise UnreadableFrameError(f"{path}: not a readable video ({type(e).__name__}: {e})") from None


def display_oriented(image: np.ndarray, matrix, path: str | os.PathLike = "video") -> np.ndarray:
  """`image` (H, W, C) as displayed under an ffmpeg display matrix (AV_PKT_DATA_DISPLAYMATRIX: 9 int32,
  16.16 fixed point), the way ffmpeg's autorotation applies it: rotations by multiples of 90 degrees, with the
  matrix's flips. None: `image` unchanged. Another angle: UnreadableFrameError (re-encode the video upright).

  Returns (H, W, C) or (W, H, C), a view of `image` where possible.
  """
  if matrix is None:
    return image
  m = [float(v) for v in matrix]
  scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
  if scale_x == 0 or scale_y == 0:  # not a transformation: ffmpeg ignores it too
    return image
  # Clockwise rotation to apply for display, in [-0.9, 359.1) degrees (ffmpeg's get_rotation).
  theta = float(round(math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x))))
  theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
  if abs(theta - 90) < 1:
    return image.swapaxes(0, 1) if m[3] > 0 else np.rot90(image, -1)  # transpose / 90 degrees clockwise
  if abs(theta - 180) < 1:
    image = image[:, ::-1] if m[0] < 0 else image
    return image[::-1] if m[4] < 0 else image
  if abs(theta - 270) < 1:
    return image[::-1, ::-1].swapaxes(0, 1) if m[3] < 0 else np.rot90(image, 1)  # anti-transpose / counterclockwise
  if abs(theta) > 1:
    raise UnreadableFrameError(f"{path}: the video is displayed rotated by {theta:g} degrees clockwise (its display "
                               "matrix); only multiples of 90 are supported: re-encode it upright")
  return image[::-1] if m[4] < 0 else image


def _av_display_matrix(frame) -> np.ndarray | None:
  """The frame's display matrix (9 int32) or None (PyAV attaches the stream's to every decoded frame).

  Reading `frame.side_data` makes a reference cycle (the frame caches a container that refers to it), so a
  frame read this way is freed by the cyclic garbage collector, not at once: call it on few frames."""
  side_data = frame.side_data.get("DISPLAYMATRIX")
  return None if side_data is None else np.frombuffer(bytes(side_data), np.int32)[:9].copy()


def _av_video_stream(container, path: pathlib.Path):
  if not container.streams.video:
    raise UnreadableFrameError(f"{path}: no video stream in this file (streams: "
                               f"{', '.join(s.type for s in container.streams) or 'none'})")
  return container.streams.video[0]


def _av_frames(path: pathlib.Path) -> Iterator[np.ndarray]:
  import av  # noqa: PLC0415
  with _video_errors(path), av.open(str(path)) as container:
    rotation, matrix = None, None
    for frame in container.decode(_av_video_stream(container, path)):
      if frame.rotation != rotation:  # the first frame, or a new display matrix (read without the side-data cycle)
        rotation, matrix = frame.rotation, _av_display_matrix(frame)
      yield np.ascontiguousarray(display_oriented(frame.to_ndarray(format="rgb24"), matrix, path))


class _Probe(NamedTuple):
  count: int  # the number of frames
  size: tuple[int, int]  # (height, width) of the first frame as displayed
  fps: float | None


def _first_frame(frames: Iterator[np.ndarray], path: pathlib.Path) -> np.ndarray:
  """The first frame of `frames` (the iterator is closed; nothing else is decoded)."""
  try:
    first = next(frames, None)
  finally:
    frames.close()
  if first is None:
    raise UnreadableFrameError(f"{path}: the video has no frames")
  return first


def _probe_av(path: pathlib.Path) -> _Probe:
  """The frame count from the packets (read, not decoded): those an edit list drops are not frames; a packet
  the demuxer marks corrupt (cut short) or fewer packets than the header lists is a truncated file."""
  import av  # noqa: PLC0415
  with _video_errors(path):
    with av.open(str(path)) as container:
      stream = _av_video_stream(container, path)
      listed = int(stream.frames or 0)  # the header's count (0: none, e.g. Matroska); includes dropped packets
      fps = float(stream.average_rate) if stream.average_rate else None
      packets = count = 0
      for packet in container.demux(stream):
        if not packet.size:  # the demuxer's final empty packet
          continue
        if packet.is_corrupt:
          raise UnreadableFrameError(f"{path}: the data of frame {packets} is corrupt or cut short (a truncated "
                                     "file?)")
        packets += 1
        count += not packet.is_discard
    if listed and packets < listed:
      raise UnreadableFrameError(f"{path}: its header lists {listed} frames but the file holds {packets} (a "
                                 "truncated file?)")
    if not count:
      raise UnreadableFrameError(f"{path}: the video has no frames")
    first = _first_frame(_av_frames(path), path)
  return _Probe(count, (int(first.shape[0]), int(first.shape[1])), fps)


def _imageio_frames(path: pathlib.Path) -> Iterator[np.ndarray]:
  import imageio.v3 as iio  # noqa: PLC0415
  with _video_errors(path):
    for frame in iio.imiter(str(path), plugin="FFMPEG"):  # ffmpeg autorotates
      yield np.ascontiguousarray(np.asarray(frame, np.uint8)[..., :3])


def _probe_imageio(path: pathlib.Path) -> _Probe:
  """The count by decoding every frame once (frames are not kept): imageio gives no count that accounts for
  edit lists and dropped frames."""
  first = _first_frame(_imageio_frames(path), path)
  count = sum(1 for _ in _imageio_frames(path))
  return _Probe(count, (int(first.shape[0]), int(first.shape[1])), None)


_READERS: dict[str, tuple[Callable[[pathlib.Path], _Probe], Callable[[pathlib.Path], Iterator[np.ndarray]]]] = {
    "av": (_probe_av, _av_frames), "imageio": (_probe_imageio, _imageio_frames)}


class VideoFile(Video):
  """A video file decoded with PyAV or imageio-ffmpeg (frames named 00000, 00001, ...; module docstring).

  Attributes (besides `Video`'s): fps: the average frame rate, None when unknown. reader: "av" or "imageio".
  """

  def __init__(self, path: pathlib.Path, reader: str | None = None):
    reader = reader or available_reader()
    if reader is None:
      raise UserValueError(f"{path}: reading video files needs a video reader ({READER_HINT}); "
                           "or pass a directory of frame images")
    if reader not in _READERS:
      raise ValueError(f"unknown video reader {reader!r} (known: {', '.join(_READERS)})")
    self.reader = reader
    probe, self._decode_frames = _READERS[reader]
    count, size, self.fps = probe(path)
    super().__init__(path, [f"{i:05d}" for i in range(count)], size)

  def frames(self):
    decoded = 0
    for i, frame in enumerate(self._decode_frames(self.path)):
      if i >= self.num_frames:
        raise UnreadableFrameError(f"{self.path}: more frames decode than the {self.num_frames} its packets hold")
      if frame.shape[:2] != self.size:
        raise UnreadableFrameError(
            f"{self.path}: frame {i} is {frame.shape[0]}x{frame.shape[1]} but the first frame is "
            f"{self.size[0]}x{self.size[1]} (the resolution changes mid-stream); all frames of a video must have "
            "one size: re-encode it at one size")
      decoded += 1
      yield i, self.frame_names[i], frame
    if decoded != self.num_frames:  # a decoder that drops undecodable frames
      raise UnreadableFrameError(f"{self.path}: only {decoded} of its {self.num_frames} frames decode (a truncated "
                                 "or corrupt file?)")


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
           "available_reader", "display_oriented", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "READER_HINT"]
