"""dinoseg.video_io on real video files, written with PyAV in the test (no files are committed): the frames come
back within codec error, in order, with the right count, size and frame rate (MP4 with H.264, Matroska with
MPEG-4 part 2, whose header has no frame count); the display matrix (rotation, flip) is applied as a player
applies it; iterating keeps a few frames in memory, not the video; and the bad files (truncated, not a video, no
video stream, no frames, a resolution change mid-stream) are one-line `UnreadableFrameError`s.

The fallback reader (PyAV hidden; the ffmpeg binary imageio-ffmpeg ships, run as a subprocess) reads the same
clips into frames equal to PyAV's, and refuses the same bad files in one line; without either reader a video file
is one line naming both packages.

`dinoseg predict` on an .mp4 is tested in tests/models/ov2seg/test_predict.py (it reuses that file's tiny model);
here only a bad .mp4 read by the fallback (exit status 2). Skipped where PyAV (`pip install dinoseg[video]`) is
not installed, the fallback's tests where imageio-ffmpeg is not; the test extra installs both."""
import gc
import math
import os
import pathlib
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from dinoseg import video_io  # noqa: E402
from dinoseg.errors import UserError  # noqa: E402

FPS = 10
CODEC_ERROR = 4.0  # mean absolute difference (of 255) of a decoded frame from the one written


def moving_squares(num_frames: int = 12, height: int = 64, width: int = 96) -> np.ndarray:
  """(T, H, W, 3) uint8: a smooth gradient with a red square moving right and a green one moving down."""
  yy, xx = np.mgrid[:height, :width]
  background = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 96)], -1)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    frame = background.copy()
    x0 = (4 + 5 * t) % (width - 16)
    frame[8:24, x0:x0 + 16] = (255, 40, 40)
    y0 = (2 + 3 * t) % (height - 20)
    frame[y0:y0 + 20, width - 30:width - 10] = (30, 220, 60)
    frames[t] = frame
  return frames


def write_video(path, frames: np.ndarray, codec: str = "libx264", *, rotation: float | None = None,
                hflip: bool = False, container_format: str | None = None,
                container_options: dict | None = None) -> pathlib.Path:
  """Encodes (T, H, W, 3) uint8 RGB `frames` (H, W even) as yuv420p at FPS frames/s, near-lossless (x264 crf 10,
  others 4 Mb/s). rotation / hflip: the stream's display matrix (degrees counterclockwise, as PyAV's
  `set_display_rotation`)."""
  with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
    stream = container.add_stream(codec, rate=FPS)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "10"}
    else:
      stream.bit_rate = 4_000_000
    if rotation is not None or hflip:
      stream.set_display_rotation(rotation or 0, hflip=hflip)
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return pathlib.Path(path)


def read_all(video) -> np.ndarray:
  return np.stack([frame for _, _, frame in video.frames()])


def mean_abs_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# ----------------------------------------------------------------------------- frames back


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.mkv", "mpeg4")])
def test_frames_read_back(tmp_path, name, codec):
  written = moving_squares()
  video = video_io.open_video(write_video(tmp_path / name, written, codec))
  assert isinstance(video, video_io.VideoFile) and video.reader == "av"
  # Known from the packets (not decoded) and the first frame.
  assert video.num_frames == 12 and video.size == (64, 96) and video.fps == pytest.approx(FPS)
  assert video.frame_names == [f"{i:05d}" for i in range(12)] and video.name == name
  frames = read_all(video)
  assert frames.shape == (12, 64, 96, 3) and frames.dtype == np.uint8
  # Within codec error (yuv420p halves the chroma resolution at the squares' edges) of the frame written at t,
  # and clearly closer to it than to any other written frame (order kept, none dropped or repeated).
  distances = np.array([[mean_abs_diff(decoded, w) for w in written] for decoded in frames])
  assert np.all(np.diag(distances) < CODEC_ERROR), np.diag(distances)
  others = distances + np.diag(np.full(12, np.inf))
  assert np.all(others.min(1) > np.diag(distances) + 1), distances
  windows = list(video.windows(5))
  assert [start for start, _, _ in windows] == [0, 5, 10]
  assert [names for _, names, _ in windows][-1] == ["00010", "00011"]
  np.testing.assert_array_equal(np.concatenate([w for _, _, w in windows]), frames)  # a second pass: same frames


def _resident_mib() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set size from /proc")
def test_iterating_keeps_a_few_frames_in_memory(tmp_path):
  """Windows of 4 over 100 frames of 240 x 320 (22 MiB decoded): the resident set grows by a few frames' worth,
  not with the video (ffmpeg's frame buffers included, which tracemalloc does not see)."""
  frames = np.repeat(moving_squares(20, 240, 320), 5, axis=0)
  video = video_io.open_video(write_video(tmp_path / "long.mp4", frames))
  del frames
  gc.collect()
  start, peak, count = _resident_mib(), 0.0, 0
  for _, _, window in video.windows(4):
    count += window.shape[0]
    peak = max(peak, _resident_mib() - start)
  assert count == 100
  assert peak < 8, f"the resident set grew by {peak:.1f} MiB while decoding"


@pytest.mark.parametrize("rotation,hflip,displayed", [
    (90, False, lambda f: np.rot90(f, 1, axes=(1, 2))),    # counterclockwise
    (-90, False, lambda f: np.rot90(f, -1, axes=(1, 2))),  # clockwise (a phone held upright)
    (180, False, lambda f: f[:, ::-1, ::-1]),
    (0, True, lambda f: f[:, :, ::-1]),                    # mirrored
])
def test_display_matrix_is_applied(tmp_path, rotation, hflip, displayed):
  written = moving_squares(3)
  video = video_io.open_video(write_video(tmp_path / "phone.mp4", written, rotation=rotation, hflip=hflip))
  expected = np.ascontiguousarray(displayed(written))
  assert video.size == expected.shape[1:3]
  frames = read_all(video)
  assert frames.shape == expected.shape and frames.flags["C_CONTIGUOUS"]
  assert mean_abs_diff(frames, expected) < CODEC_ERROR


def _rotation_matrix(degrees_counterclockwise: float) -> np.ndarray:
  """An ffmpeg display matrix (16.16 fixed point) for a rotation (PyAV's set_display_rotation convention)."""
  c, s = math.cos(math.radians(degrees_counterclockwise)), math.sin(math.radians(degrees_counterclockwise))
  return np.array([c * 65536, -s * 65536, 0, s * 65536, c * 65536, 0, 0, 0, 1 << 30]).round().astype(np.int32)


def test_display_oriented_other_angles():
  image = np.arange(2 * 3 * 1).reshape(2, 3, 1)
  assert video_io.display_oriented(image, None) is image
  np.testing.assert_array_equal(video_io.display_oriented(image, _rotation_matrix(0.3)), image)  # < 1 degree
  np.testing.assert_array_equal(video_io.display_oriented(image, _rotation_matrix(90)), np.rot90(image, 1))
  np.testing.assert_array_equal(video_io.display_oriented(image, _rotation_matrix(-90)), np.rot90(image, -1))
  with pytest.raises(video_io.UnreadableFrameError, match="rotated by 315 degrees clockwise.*multiples of 90"):
    video_io.display_oriented(image, _rotation_matrix(45), "x.mp4")


# ----------------------------------------------------------------------------- bad files


def _one_line_unreadable(path, *words, decode: bool = False) -> str:
  with pytest.raises(video_io.UnreadableFrameError) as info:
    video = video_io.open_video(path)
    if decode:
      read_all(video)
  message = str(info.value)
  assert isinstance(info.value, UserError) and "\n" not in message and str(path) in message, message
  for word in words:
    assert word in message, message
  return message


def test_truncated_and_non_video_files(tmp_path):
  written = moving_squares()
  # The moov index at the end (the default): the first half has no index.
  data = write_video(tmp_path / "full.mp4", written).read_bytes()
  (tmp_path / "half.mp4").write_bytes(data[:len(data) // 2])
  _one_line_unreadable(tmp_path / "half.mp4", "not a readable video")
  # The index first (faststart): the header lists 12 frames, the first half of the file holds fewer (the last one
  # cut short); the last 200 bytes missing: the last frame's data is cut short; cut between two frames' data.
  data = write_video(tmp_path / "faststart.mp4", written, container_options={"movflags": "faststart"}).read_bytes()
  (tmp_path / "faststart_half.mp4").write_bytes(data[:len(data) // 2])
  _one_line_unreadable(tmp_path / "faststart_half.mp4", "truncated")
  (tmp_path / "faststart_cut.mp4").write_bytes(data[:-200])
  _one_line_unreadable(tmp_path / "faststart_cut.mp4", "cut short")
  with av.open(str(tmp_path / "faststart.mp4")) as container:  # cut where the 6th frame's data ends
    ends = sorted(p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size)
  (tmp_path / "faststart_6.mp4").write_bytes(data[:ends[5]])
  _one_line_unreadable(tmp_path / "faststart_6.mp4", "header lists 12 frames but the file holds 6")
  # Not a video at all; an empty file.
  (tmp_path / "notes.mp4").write_text("these are notes, not a video\n")
  _one_line_unreadable(tmp_path / "notes.mp4", "not a readable video")
  (tmp_path / "empty.mp4").write_bytes(b"")
  _one_line_unreadable(tmp_path / "empty.mp4", "not a readable video")


def write_trimmed_video(path, written: np.ndarray) -> pathlib.Path:
  """`written` (T, H, W, 3) as H.264 in MP4 with its packets muxed 3 frames early: the mp4 muxer writes an edit
  list that starts at the 4th frame, so the header lists T frames of which a player shows (and ffmpeg decodes)
  T - 3."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height = written.shape[2], written.shape[1]
    stream.pix_fmt, stream.options = "yuv420p", {"crf": "10", "bf": "0"}
    packets = [p for f in written for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24"))]
    for packet in packets + list(stream.encode()):
      assert packet.time_base == Fraction(1, FPS)  # the encoder's: one tick per frame
      packet.pts -= 3
      packet.dts -= 3
      container.mux(packet)
  return pathlib.Path(path)


def test_frames_an_edit_list_drops_are_not_frames(tmp_path):
  written = moving_squares()
  write_trimmed_video(tmp_path / "trimmed.mp4", written)
  with av.open(str(tmp_path / "trimmed.mp4")) as container:
    assert container.streams.video[0].frames == 12
  video = video_io.open_video(tmp_path / "trimmed.mp4")
  assert video.num_frames == 9
  frames = read_all(video)
  assert len(frames) == 9 and mean_abs_diff(frames, written[3:]) < CODEC_ERROR


def test_frames_that_do_not_decode_stop_the_video(tmp_path):
  """A decoder that outputs fewer frames than the packets hold (it drops what it cannot decode): the frames
  would no longer line up with the count and names, so the video is refused once its frames run out."""
  video = video_io.open_video(write_video(tmp_path / "clip.mp4", moving_squares()))
  decode = video._decode_frames
  video._decode_frames = lambda path: (f for i, f in enumerate(decode(path)) if i != 7)
  with pytest.raises(video_io.UnreadableFrameError, match="only 11 of its 12 frames decode"):
    read_all(video)


def test_no_video_stream_and_no_frames(tmp_path):
  with av.open(str(tmp_path / "sound.mp4"), "w") as container:  # audio only
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for _ in range(4):
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  _one_line_unreadable(tmp_path / "sound.mp4", "no video stream", "audio")
  # A video stream without frames: MP4 drops such a track, Matroska needs a frame to finish its header, AVI
  # keeps it.
  for name in ("zero.mp4", "zero.mkv", "zero.avi"):
    with av.open(str(tmp_path / name), "w") as container:
      stream = container.add_stream("mpeg4", rate=FPS)
      stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
      container.start_encoding()
  _one_line_unreadable(tmp_path / "zero.mp4", "no video stream")
  _one_line_unreadable(tmp_path / "zero.mkv", "ends early")
  _one_line_unreadable(tmp_path / "zero.avi", "no frames")


def test_resolution_change_mid_stream(tmp_path):
  """Two H.264 streams of different sizes, concatenated (a valid Annex B stream: ffmpeg decodes both sizes): the
  frames of the second size are refused, naming the first of them."""
  parts = [write_video(tmp_path / f"part{i}.h264", moving_squares(4, h, w), container_format="h264")
           for i, (h, w) in enumerate(((64, 96), (48, 64)))]
  (tmp_path / "joined.h264").write_bytes(b"".join(p.read_bytes() for p in parts))
  video = video_io.VideoFile(tmp_path / "joined.h264")  # open_video takes video file suffixes only
  assert video.size == (64, 96) and video.num_frames == 8
  with pytest.raises(video_io.UnreadableFrameError, match="frame 4 is 48x64 but the first frame is 64x96"):
    read_all(video)


# ----------------------------------------------------------------------------- the fallback: imageio-ffmpeg
# With PyAV hidden (`import av` fails, as where it is not installed), video files are read by the ffmpeg binary
# that imageio-ffmpeg ships. ffmpeg 9.0 there, PyAV's bundled 8.1 here: both decode to the same pixels (the
# same bilinear scaler flags for the yuv -> RGB conversion), so frames are compared for exact equality.


@pytest.fixture
def hide_pyav(monkeypatch):
  """A function that hides PyAV from dinoseg.video_io for the rest of the test (the files are written first)."""
  pytest.importorskip("imageio_ffmpeg")

  def hide():
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError; find_spec("av") is None
    assert video_io.available_reader() == "imageio-ffmpeg"
  return hide


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.mkv", "mpeg4")])
def test_fallback_reads_the_frames_pyav_reads(tmp_path, hide_pyav, name, codec):
  path = write_video(tmp_path / name, moving_squares(), codec)
  by_pyav = read_all(video_io.open_video(path))
  hide_pyav()
  video = video_io.open_video(path)
  assert video.reader == "imageio-ffmpeg"
  assert video.num_frames == 12 and video.size == (64, 96) and video.fps == pytest.approx(FPS)
  assert video.frame_names == [f"{i:05d}" for i in range(12)] and video.name == name
  frames = read_all(video)
  assert frames.dtype == np.uint8 and frames.flags["C_CONTIGUOUS"]
  np.testing.assert_array_equal(frames, by_pyav)
  windows = list(video.windows(5))
  assert [names for _, names, _ in windows][-1] == ["00010", "00011"]
  np.testing.assert_array_equal(np.concatenate([w for _, _, w in windows]), frames)  # a second pass: same frames


def test_fallback_edit_list_and_display_matrices(tmp_path, hide_pyav):
  """The frames an edit list drops are not frames; rotations by multiples of 90 degrees and flips come out as
  PyAV's display_oriented gives them; another angle is refused with PyAV's message."""
  written = moving_squares(3)
  paths = [write_trimmed_video(tmp_path / "trimmed.mp4", moving_squares())]
  paths += [write_video(tmp_path / f"phone_{i}.mp4", written, rotation=rotation, hflip=hflip)
            for i, (rotation, hflip) in enumerate(((90, False), (-90, False), (180, False), (0, True), (90, True)))]
  by_pyav = [read_all(video_io.open_video(p)) for p in paths]
  write_video(tmp_path / "tilted.mp4", written, rotation=45)
  with pytest.raises(video_io.UnreadableFrameError) as refused_by_pyav:
    video_io.open_video(tmp_path / "tilted.mp4")
  hide_pyav()
  for path, expected in zip(paths, by_pyav):
    video = video_io.open_video(path)
    assert video.num_frames == len(expected) and video.size == expected.shape[1:3], path
    np.testing.assert_array_equal(read_all(video), expected, err_msg=str(path))
  assert by_pyav[0].shape == (9, 64, 96, 3) and by_pyav[1].shape == (3, 96, 64, 3)
  message = _one_line_unreadable(tmp_path / "tilted.mp4", "rotated by 315 degrees clockwise", "multiples of 90")
  assert message == str(refused_by_pyav.value)


def write_bad_video_files(folder: pathlib.Path) -> dict[str, tuple[str, ...]]:
  """Writes the bad files of the tests above into `folder`; returns {file name: words of the fallback's error}."""
  written = moving_squares()
  data = write_video(folder / "full.mp4", written).read_bytes()
  (folder / "half.mp4").write_bytes(data[:len(data) // 2])  # no index
  data = write_video(folder / "faststart.mp4", written, container_options={"movflags": "faststart"}).read_bytes()
  (folder / "faststart_half.mp4").write_bytes(data[:len(data) // 2])  # the 2nd frame cut short, the rest missing
  (folder / "faststart_cut.mp4").write_bytes(data[:-200])  # the last frame cut short
  with av.open(str(folder / "faststart.mp4")) as container:
    ends = sorted(p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size)
  (folder / "faststart_6.mp4").write_bytes(data[:ends[5]])  # cut between the 6th and 7th frames' data
  (folder / "notes.mp4").write_text("these are notes, not a video\n")
  (folder / "empty.mp4").write_bytes(b"")
  with av.open(str(folder / "sound.mp4"), "w") as container:  # audio only
    stream = container.add_stream("aac", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    frame.sample_rate = 16000
    for _ in range(4):
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  for name in ("zero.mp4", "zero.mkv", "zero.avi"):  # a video stream without frames
    with av.open(str(folder / name), "w") as container:
      stream = container.add_stream("mpeg4", rate=FPS)
      stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
      container.start_encoding()
  parts = [write_video(folder / f"part{i}.h264", moving_squares(4, h, w), container_format="h264")
           for i, (h, w) in enumerate(((64, 96), (48, 64)))]
  (folder / "joined.h264").write_bytes(b"".join(p.read_bytes() for p in parts))
  return {"half.mp4": ("not a readable video", "moov atom not found"),
          "faststart_half.mp4": ("frame 1 or a later one is corrupt or cut short", "truncated"),
          "faststart_cut.mp4": ("frame 11 or a later one is corrupt or cut short", "truncated"),
          "faststart_6.mp4": ("duration of 1.20 s but its 6 frames end at 0.60 s", "truncated"),
          "notes.mp4": ("not a readable video",), "empty.mp4": ("not a readable video",),
          "sound.mp4": ("no video stream in this file (streams: audio)",),
          "zero.mp4": ("no video stream in this file (streams: none)",), "zero.mkv": ("ends early",),
          "zero.avi": ("the video has no frames",),
          "joined.h264": ("frame 4 is 48x64 but the first frame is 64x96", "resolution changes mid-stream")}


def test_fallback_bad_files(tmp_path, hide_pyav):
  """The bad files PyAV refuses are refused by the fallback too, one line each, at opening (the probe decodes
  every frame); the messages differ where the readers see different things (e.g. no header frame count)."""
  expected = write_bad_video_files(tmp_path)
  for name in expected:  # PyAV refuses them (at opening or decoding), as the tests above check
    with pytest.raises(video_io.UnreadableFrameError):
      read_all(video_io.VideoFile(tmp_path / name))  # VideoFile: open_video takes video file suffixes only
  hide_pyav()
  for name, words in expected.items():
    with pytest.raises(video_io.UnreadableFrameError) as info:
      video_io.VideoFile(tmp_path / name)  # the fallback refuses all of them at opening
    message = str(info.value)
    assert "\n" not in message and len(message) < 300 and message.startswith(f"{tmp_path / name}: "), message
    assert all(word in message for word in words), message


def test_fallback_stops_ffmpeg_and_reports_its_failure(tmp_path, hide_pyav, monkeypatch):
  """Closing the frames early stops ffmpeg. A file replaced after opening: ffmpeg failing while decoding is
  refused after the frames it gave; frames of another size (ffmpeg does not rescale them) are refused."""
  path = write_video(tmp_path / "clip.mp4", moving_squares(), container_options={"movflags": "faststart"})
  data = path.read_bytes()
  hide_pyav()
  video = video_io.open_video(path)
  started = []

  class RecordedPopen(subprocess.Popen):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      started.append(self)
  monkeypatch.setattr(video_io.subprocess, "Popen", RecordedPopen)
  frames = video.frames()
  assert next(frames)[0] == 0
  frames.close()
  assert len(started) == 1 and started[0].returncode is not None and started[0].stdout.closed
  path.write_bytes(data[:-200])  # the last frame cut short
  decoded = []
  with pytest.raises(video_io.UnreadableFrameError, match="frame 11 or a later one is corrupt or cut short"):
    decoded.extend(frame for _, _, frame in video.frames())
  assert len(decoded) == 11
  write_video(path, moving_squares(5, 48, 64))  # 5 frames of 48 x 64: 2.5 frames' bytes of 64 x 96
  with pytest.raises(video_io.UnreadableFrameError, match="frame 2 decodes to 9216 bytes, not 64x96x3"):
    read_all(video)


def test_no_video_reader(tmp_path, monkeypatch):
  """Neither PyAV nor imageio-ffmpeg: a video file is one line naming both packages; frames directories work."""
  from PIL import Image
  path = write_video(tmp_path / "clip.mp4", moving_squares(2))
  (tmp_path / "frames").mkdir()
  Image.fromarray(moving_squares(1)[0]).save(tmp_path / "frames" / "00000.png")
  monkeypatch.setitem(sys.modules, "av", None)
  monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
  assert video_io.available_reader() is None
  with pytest.raises(UserError) as info:
    video_io.open_video(path)
  message = str(info.value)
  assert "\n" not in message and "pip install av" in message and "pip install imageio-ffmpeg" in message, message
  assert video_io.open_video(tmp_path / "frames").num_frames == 1


def test_fallback_without_an_ffmpeg_binary(tmp_path, hide_pyav, monkeypatch):
  """imageio-ffmpeg installed without a binary for this platform (and none on PATH): one line."""
  import imageio_ffmpeg
  path = write_video(tmp_path / "clip.mp4", moving_squares(2))
  hide_pyav()

  def no_binary():
    raise RuntimeError("No ffmpeg exe could be found. Install ffmpeg on your system, or set the IMAGEIO_FFMPEG_EXE "
                       "environment variable.")
  monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", no_binary)
  with pytest.raises(UserError, match="imageio-ffmpeg found no ffmpeg binary .*No ffmpeg exe.*pip install av"):
    video_io.open_video(path)


def test_cli_fallback_bad_video_is_one_line(tmp_path, hide_pyav, monkeypatch, capsys):
  """`dinoseg predict` on a truncated .mp4 read by the fallback: one line, exit status 2. The OV2Seg predictor
  is a stand-in here (the video is refused before any frame reaches a model; tests/models/ov2seg/test_predict.py
  runs the real one on PyAV-read videos)."""
  from dinoseg import cli, predict

  class Unused:
    def finish(self, out_dir):
      return None
  monkeypatch.setattr(predict, "build_predictor", lambda config, weights, **options: Unused())
  data = write_video(tmp_path / "full.mp4", moving_squares(), container_options={"movflags": "faststart"})
  (tmp_path / "cut.mp4").write_bytes(data.read_bytes()[:-200])
  hide_pyav()
  config = pathlib.Path(__file__).parents[1] / "configs" / "ov2seg" / "r50_lvis.py"
  rc = cli.main(["predict", f"--config={config}", f"--weights={tmp_path / 'unused.pth'}",
                 f"--input={tmp_path / 'cut.mp4'}", f"--output={tmp_path / 'out'}", "--classes=a,b"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("dinoseg predict: error:"), err
  assert "cut.mp4" in err[0] and "cut short" in err[0], err
