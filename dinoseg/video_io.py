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
  its wheels bundle ffmpeg) or, if that is not installed, with the ffmpeg binary that imageio-ffmpeg ships
  (`pip install imageio-ffmpeg`), run as a subprocess. Without either, opening one is a one-line
  `UserValueError` naming the packages to install; frames directories always work. Opening with PyAV reads
  the packets without decoding them (the frame count: the packets an edit list drops are not frames) and
  decodes the first frame (the size); the ffmpeg reader decodes the video once (frames not kept) to count its
  frames and check their sizes. `fps` is the stream's average frame rate (None when unknown). Frames are RGB
  uint8 as a player shows them: PyAV applies the stream's display matrix (`display_oriented`: rotations by
  multiples of 90 degrees and flips, as ffmpeg's autorotation; other angles are refused), the ffmpeg reader
  gets ffmpeg's own autorotation (other angles refused the same way); the two readers' frames are equal
  (tests/test_video_io_mp4.py: H.264 and MPEG-4 part 2, rotated and mirrored). A file that is not a video,
  has no video stream or no frames, is truncated (fewer packets than its header lists, a packet cut short) or
  corrupt (a decoder error, or fewer frames decoding than its packets hold), or whose resolution changes
  mid-stream, is a one-line `UnreadableFrameError` (a `UserValueError`): at opening, or when the bad frame is
  reached. The ffmpeg reader decodes every frame at opening, so it refuses all of these there; it sees no
  header frame count: a file cut exactly between two frames' data is refused when the video is its only
  stream (its frames end before the header's duration), and read as the frames before the cut otherwise.

`list_videos(path)`: a video file or frames directory is one video; a directory of frames directories
and / or video files is several (sorted by name).
"""
import contextlib
import functools
import importlib.util
import logging
import math
import os
import pathlib
import re
import subprocess
import tempfile
from typing import Callable, Iterator, NamedTuple

import numpy as np

from dinoseg.errors import UserError, UserFileNotFoundError, UserValueError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
READER_HINT = ("pip install av (PyAV, bundles ffmpeg; or pip install dinoseg[video]) "
               "or pip install imageio-ffmpeg (bundles an ffmpeg binary)")


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
  """"av" (PyAV), "imageio-ffmpeg" (its ffmpeg binary, run as a subprocess) or None: the video-file reader
  that is installed, PyAV first."""
  if importlib.util.find_spec("av") is not None:
    return "av"
  if importlib.util.find_spec("imageio_ffmpeg") is not None:
    return "imageio-ffmpeg"
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
  except Exception as e:  # noqa: BLE001  (av.FFmpegError subclasses, OSError, ...)
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


def _av_frames(path: pathlib.Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
  """(H, W, 3) uint8 RGB frames as displayed (`size` is not used: PyAV gives each frame's size)."""
  del size
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


def _ffmpeg_executable() -> str:
  """The ffmpeg binary imageio-ffmpeg ships (or the one its IMAGEIO_FFMPEG_EXE variable names)."""
  import imageio_ffmpeg  # noqa: PLC0415
  try:
    return imageio_ffmpeg.get_ffmpeg_exe()
  except RuntimeError as e:  # its wheel has no binary for this platform and none is on PATH
    raise UserValueError(f"imageio-ffmpeg found no ffmpeg binary ({e}); {READER_HINT}") from None


# ffmpeg's command line, common to the probe and the decoding: the first video stream, frames passed through as
# decoded (no frame rate conversion: no frame dropped or repeated), and any decoding or demuxing error fatal
# (-xerror). ffmpeg autorotates by the display matrix (multiples of 90 degrees and flips). Needs ffmpeg >= 5.1
# (-fps_mode; imageio-ffmpeg 0.8.1 ships 9.0): an older binary (IMAGEIO_FFMPEG_EXE) fails every file with
# "Unrecognized option".
_FFMPEG_INPUT = ("-nostdin", "-hide_banner", "-nostats", "-xerror")
_FFMPEG_OUTPUT = ("-map", "0:v:0", "-fps_mode", "passthrough")
# showinfo's line per frame: n (index), pts_time, duration_time and s:WxH (as displayed: autorotation comes first).
_SHOWINFO = re.compile(r"\bn:\s*(\d+)\s+pts:\s*\S+\s+pts_time:(\S+)\s+duration:\s*\S+\s+duration_time:(\S+)"
                       r".*?\bs:(\d+)x(\d+)\b")
_INPUT_STREAM = re.compile(r"^\s*Stream #0:\d+\S*: (\w+):")
_FPS = re.compile(r", ([0-9.]+) fps,")  # the average frame rate ("1k fps" and up: None)
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_ROTATION = re.compile(r"display ?matrix: rotation of (-?[0-9.]+) degrees", re.IGNORECASE)  # ffmpeg 9, 6
_LOG_LEVEL = re.compile(r"\[(error|fatal)\] (.*)$")
_LOG_PREFIXES = re.compile(r"^(\[[^\]]*\] )+")  # "[in#0 @ 0x...] [info] ": the context and level


def _seconds(text: str) -> float | None:
  """A time showinfo logs, in seconds; None for "N/A" (unknown)."""
  try:
    return float(text)
  except ValueError:
    return None


def _ffmpeg_error(path: pathlib.Path, returncode: int, errors: list[str], streams: list[str],
                  decoded: int) -> UnreadableFrameError:
  """The one-line error for an ffmpeg run that failed (`errors`: its error and fatal messages, in order)."""
  text = " ".join(errors)
  detail = f"(ffmpeg: {errors[0] if errors else f'exit status {returncode}'})"
  if "matches no streams" in text:
    return UnreadableFrameError(f"{path}: no video stream in this file (streams: {', '.join(streams) or 'none'})")
  if "corrupt input packet" in text:
    return UnreadableFrameError(f"{path}: the data of frame {decoded} or a later one is corrupt or cut short (a "
                                f"truncated file?) {detail}")
  if "End of file" in text:
    return UnreadableFrameError(f"{path}: the file ends early: an empty or truncated video {detail}")
  if not decoded and ("after EOF" in text or "received no packets" in text):
    return UnreadableFrameError(f"{path}: the video has no frames {detail}")
  return UnreadableFrameError(f"{path}: not a readable video {detail}")


def _probe_ffmpeg(path: pathlib.Path) -> _Probe:
  """Decodes the video once (frames not kept; ffmpeg's showinfo filter logs each one): the count, the displayed
  size, the frame rate. Refused here: what ffmpeg fails on, a resolution change, a display matrix rotating by
  other than a multiple of 90 degrees (ffmpeg would ignore it), and a single-stream file whose frames end before
  the duration its header gives (cut between two frames' data: ffmpeg reads the frames before the cut without
  an error). ffmpeg's command line gives no header frame count: in a file with more streams such a cut goes
  unnoticed (the video is the frames before it)."""
  command = [_ffmpeg_executable(), *_FFMPEG_INPUT, "-loglevel", "level+info", "-i", str(path), *_FFMPEG_OUTPUT,
             "-vf", "showinfo", "-f", "null", "-"]
  streams, errors, fps, duration, rotation = [], [], None, None, None
  count, first_size, changed, end = 0, None, None, 0.0
  with tempfile.TemporaryFile() as log:
    returncode = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                check=False).returncode
    log.seek(0)
    in_input = False
    for raw in log:
      line = raw.decode("utf-8", "replace").rstrip("\n")
      body = _LOG_PREFIXES.sub("", line)
      if body.startswith("Input #0"):
        in_input = True
      elif body.startswith(("Stream mapping:", "Output #")):
        in_input = False
      elif in_input:
        if (stream := _INPUT_STREAM.match(body)) is not None:
          if stream.group(1) == "Video" and "video" not in streams and (m := _FPS.search(body)):  # the first's
            fps = float(m.group(1)) or None
          streams.append(stream.group(1).lower())
        elif (m := _DURATION.match(body)) is not None:
          duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        elif (m := _ROTATION.search(body)) is not None and rotation is None:
          rotation = float(m.group(1))
      if (frame := _SHOWINFO.search(line)) is not None:
        width, height = int(frame.group(4)), int(frame.group(5))
        if first_size is None:
          first_size = (height, width)
        elif changed is None and (height, width) != first_size:
          changed = (count, height, width)  # showinfo's own index restarts when the filter graph is rebuilt
        count += 1
        start, length = _seconds(frame.group(2)), _seconds(frame.group(3)) or (1 / fps if fps else None)
        end = None if None in (end, start, length) else max(end, start + length)  # None: times unknown
      elif (error := _LOG_LEVEL.search(line)) is not None:
        errors.append(error.group(2).strip())
  if rotation is not None:  # ffmpeg prints the counterclockwise angle; display_oriented's check and message
    clockwise = -rotation % 360
    if min(clockwise % 90, 90 - clockwise % 90) >= 1:
      raise UnreadableFrameError(f"{path}: the video is displayed rotated by {clockwise:g} degrees clockwise (its "
                                 "display matrix); only multiples of 90 are supported: re-encode it upright")
  if returncode:
    raise _ffmpeg_error(path, returncode, errors, streams, count)
  if not count:
    raise UnreadableFrameError(f"{path}: the video has no frames")
  if changed is not None:
    raise UnreadableFrameError(
        f"{path}: frame {changed[0]} is {changed[1]}x{changed[2]} but the first frame is "
        f"{first_size[0]}x{first_size[1]} (the resolution changes mid-stream); all frames of a video must have one "
        "size: re-encode it at one size")
  frame_time = 1 / fps if fps else 0.0
  if len(streams) == 1 and None not in (duration, end) and end + frame_time / 2 + 0.01 < duration:
    raise UnreadableFrameError(f"{path}: its header gives a duration of {duration:.2f} s but its {count} frames "
                               f"end at {end:.2f} s (a truncated file?)")
  return _Probe(count, first_size, fps)


def _ffmpeg_frames(path: pathlib.Path, size: tuple[int, int]) -> Iterator[np.ndarray]:
  """Decodes with ffmpeg into (H, W, 3) uint8 RGB frames of the probed (displayed) `size`, read from its
  standard output one frame at a time; ffmpeg's failure (exit status, error messages) is an
  UnreadableFrameError after the frames it gave. Closing the iterator early stops ffmpeg."""
  height, width = size
  frame_bytes = height * width * 3
  # bilinear: the scaler flags of PyAV's to_ndarray (ffmpeg's default: bicubic). They make no difference to the
  # unscaled yuv420p -> rgb24 conversion of the tests' clips (equal with either), but may where ffmpeg scales.
  command = [_ffmpeg_executable(), *_FFMPEG_INPUT, "-loglevel", "level+error", "-i", str(path), *_FFMPEG_OUTPUT,
             "-sws_flags", "bilinear", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
  with tempfile.TemporaryFile() as log:
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    decoded = 0
    try:
      while data := process.stdout.read(frame_bytes):
        if len(data) != frame_bytes:
          raise UnreadableFrameError(f"{path}: frame {decoded} decodes to {len(data)} bytes, not {height}x{width}x3")
        decoded += 1
        yield np.frombuffer(data, np.uint8).reshape(height, width, 3).copy()
      returncode = process.wait()
      if returncode:
        log.seek(0)
        errors = [m.group(2).strip() for raw in log
                  if (m := _LOG_LEVEL.search(raw.decode("utf-8", "replace").rstrip("\n"))) is not None]
        raise _ffmpeg_error(path, returncode, errors, ["video"], decoded)
    finally:
      if process.poll() is None:  # closed early, or an error above
        process.kill()
      process.stdout.close()
      process.wait()


# name -> (probe, decoder): the decoder takes the path and the probed (height, width) of the frames.
_READERS: dict[str, tuple[Callable[[pathlib.Path], _Probe],
                          Callable[[pathlib.Path, tuple[int, int]], Iterator[np.ndarray]]]] = {
    "av": (_probe_av, _av_frames), "imageio-ffmpeg": (_probe_ffmpeg, _ffmpeg_frames)}


class VideoFile(Video):
  """A video file decoded with PyAV or imageio-ffmpeg (frames named 00000, 00001, ...; module docstring).

  Attributes (besides `Video`'s): fps: the average frame rate, None when unknown. reader: "av" or
  "imageio-ffmpeg".
  """

  def __init__(self, path: pathlib.Path, reader: str | None = None):
    reader = reader or available_reader()
    if reader is None:
      raise UserValueError(f"{path}: reading video files needs a video reader ({READER_HINT}); "
                           "or pass a directory of frame images")
    if reader not in _READERS:
      raise ValueError(f"unknown video reader {reader!r} (known: {', '.join(_READERS)})")
    self.reader = reader
    probe, decode = _READERS[reader]
    count, size, self.fps = probe(path)
    self._decode_frames = functools.partial(decode, size=size)  # path -> frames
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
