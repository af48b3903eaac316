"""CLIP BPE tokenizer against openai/CLIP's `clip.tokenize` (fixture from scripts/make_dinov2_clip_fixtures.py)."""
import gzip
import hashlib
import json
import pathlib

import numpy as np
import pytest

from dinoseg.backbones import clip_tokenizer
from dinoseg.backbones.clip_tokenizer import EOT_ID, SOT_ID, ClipTokenizer, load_bpe_merges, tokenize
from dinoseg.errors import UserError

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones" / "tokenizer_ids.json"
CASES = json.loads(FIXTURE.read_text())["cases"]


@pytest.fixture(scope="module")
def tokenizer():
  return clip_tokenizer.default_tokenizer()


def test_hard_strings_match_reference(tokenizer):
  assert len(CASES) >= 20
  for case in CASES:
    text = case["text"]
    assert tokenizer.encode(text) == case["encode"], repr(text)
    assert tokenize(text, truncate=True)[0].tolist() == case["ids_truncated"], repr(text)
    if case["too_long"]:
      with pytest.raises(ValueError, match="too long"):
        tokenizer(text)
    else:
      assert tokenizer(text)[0].tolist() == case["ids_truncated"], repr(text)


def test_fixture_covers_the_edge_cases():
  texts = [c["text"] for c in CASES]
  assert "" in texts
  assert any(c["too_long"] for c in CASES) and any(len(c["encode"]) == 75 for c in CASES)
  assert any(len(c["encode"]) == 76 and c["too_long"] for c in CASES)  # one id over: truncation boundary


def test_known_ids_and_batch(tokenizer):
  ids = tokenizer(["a photo of the small traffic sign.", ""])
  assert ids.shape == (2, 77) and ids.dtype == np.int32
  assert ids[0, :10].tolist() == [49406, 320, 1125, 539, 518, 2442, 3399, 2292, 269, 49407]
  assert ids[1, :3].tolist() == [SOT_ID, EOT_ID, 0]
  assert tokenizer.vocab_size == 49408
  short = tokenizer("a " * 10, context_length=5, truncate=True)
  assert short[0].tolist() == [SOT_ID, 320, 320, 320, EOT_ID]


def test_decode(tokenizer):
  assert tokenizer.decode(tokenizer.encode("A photo of a CAT!")) == "a photo of a cat ! "


def test_bpe_path_gz_and_text(tmp_path):
  merges = load_bpe_merges()
  text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
  (tmp_path / "vocab.txt.gz").write_bytes(gzip.compress(text.encode("utf-8")))
  (tmp_path / "vocab.txt").write_text(text, encoding="utf-8")
  for name in ("vocab.txt.gz", "vocab.txt"):
    tok = ClipTokenizer(bpe_path=tmp_path / name)
    assert tok.encode("naïve café 😀") == clip_tokenizer.default_tokenizer().encode("naïve café 😀")


def test_wrong_merges_are_rejected(tmp_path):
  merges = load_bpe_merges()
  swapped = [merges[1], merges[0], *merges[2:]]
  text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in swapped)
  (tmp_path / "bad.txt").write_text(text, encoding="utf-8")
  with pytest.raises(ValueError, match="not CLIP's"):
    ClipTokenizer(bpe_path=tmp_path / "bad.txt")
  (tmp_path / "short.txt").write_text("#version: 0.2\ni n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="merge lines"):
    ClipTokenizer(bpe_path=tmp_path / "short.txt")
  with pytest.raises(FileNotFoundError):
    ClipTokenizer(bpe_path=tmp_path / "missing.txt.gz")


def test_merges_are_shipped_package_data_checked_by_sha256(monkeypatch):
  data = clip_tokenizer.shipped_bpe_bytes()
  assert hashlib.sha256(data).hexdigest() == clip_tokenizer.BPE_FILE_SHA256
  assert gzip.decompress(data).startswith(b'"bpe_simple_vocab_16e6.txt#version: 0.2\n')
  assert len(load_bpe_merges()) == clip_tokenizer.NUM_MERGES
  monkeypatch.setattr(clip_tokenizer, "BPE_FILE_SHA256", "0" * 64)
  load_bpe_merges.cache_clear()
  try:
    with pytest.raises(UserError, match="is damaged: sha256 924691ac.*reinstall dinoseg"):
      load_bpe_merges()
  finally:
    load_bpe_merges.cache_clear()


def test_bad_arguments_raise(tokenizer):
  with pytest.raises(ValueError, match="text must be a str"):
    tokenizer([b"bytes"])
  with pytest.raises(ValueError, match="context_length"):
    tokenizer("a", context_length=1)
