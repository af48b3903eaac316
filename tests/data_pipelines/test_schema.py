"""The record schema: encoding, validation, decoding."""
import io

import numpy as np
import pytest
from PIL import Image

from dinoseg.data_pipelines import schema


def _jpeg(h=12, w=16):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _record(**kw):
  mask = np.zeros((12, 16), np.uint8)
  mask[2:5, 3:9] = 1
  rec = {"schema": schema.SCHEMA_VERSION, "kind": "image", "id": 7, "file_name": "a.jpg", "height": 12, "width": 16,
         "image": _jpeg(),
         "instances": {"id": [1], "category_id": [3], "bbox": [[3.0, 2.0, 6.0, 3.0]], "iscrowd": [0],
                       "area": [18.0], "rle": [schema.encode_mask(mask)]}}
  rec.update(kw)
  return rec, mask


def test_round_trip_and_decode():
  rec, mask = _record()
  data = schema.encode_record(rec)
  back = schema.decode_record(data)
  assert back == rec
  ex = schema.decode_example(back)
  assert ex["image"].shape == (12, 16, 3) and ex["image"].dtype == np.uint8
  np.testing.assert_array_equal(ex["instances"]["masks"][0], mask)
  np.testing.assert_array_equal(ex["instances"]["boxes_xyxy"], [[3, 2, 9, 5]])
  assert ex["image_id"] == 7 and ex["original_hw"].tolist() == [12, 16]
  assert schema.num_instances(back) == 1


@pytest.mark.parametrize("change,match", [
    ({"schema": 99}, "schema"),
    ({"kind": "audio"}, "kind"),
    ({"height": 0}, "size"),
    ({"image": "not bytes"}, "image bytes"),
    ({"instances": {"id": [1], "category_id": [1, 2], "bbox": [], "iscrowd": [], "area": [], "rle": []}}, "lengths"),
    ({"instances": {"id": [1]}}, "lacks columns"),
])
def test_invalid_records_are_rejected(change, match):
  rec, _ = _record(**change)
  with pytest.raises(schema.RecordError, match=match):
    schema.encode_record(rec)


def test_garbage_bytes_are_a_record_error():
  with pytest.raises(schema.RecordError):
    schema.decode_record(b"\xc1\xc1 not msgpack")
  with pytest.raises(schema.RecordError, match="must be bytes"):
    schema.decode_record("text")


def test_video_record_needs_one_rle_per_frame():
  rec = {"schema": 1, "kind": "video", "id": 1, "file_name": "v", "height": 4, "width": 4,
         "frames": {"file_name": ["0.jpg", "1.jpg"], "image": [b"x", b"y"]},
         "tracks": {"id": [1], "category_id": [1], "iscrowd": [0], "rle": [[None]]}}
  with pytest.raises(schema.RecordError, match="one rle entry per frame"):
    schema.encode_record(rec)


def test_exif_orientation_is_applied_as_detectron2_reads_images():
  from dinoseg.data_pipelines.preparers import base  # noqa: PLC0415
  image = np.zeros((20, 30, 3), np.uint8)
  image[:5] = 255
  buf = io.BytesIO()
  pil = Image.fromarray(image)
  exif = pil.getexif()
  exif[0x0112] = 6                     # rotate 90 degrees clockwise on display
  pil.save(buf, format="JPEG", exif=exif)
  decoded = schema.decode_image(buf.getvalue())
  assert decoded.shape == (30, 20, 3)
  assert base.check_image(buf.getvalue(), "x.jpg", verify=True)[:2] == (30, 20)
  assert base.check_image(buf.getvalue(), "x.jpg", verify=False)[:2] == (30, 20)
  with pytest.raises(base.SkipExample, match="size_mismatch"):
    base.check_image(buf.getvalue(), "x.jpg", (20, 30))
