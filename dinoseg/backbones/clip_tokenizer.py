"""CLIP's byte-level BPE tokenizer (vocabulary 49408, SOT 49406, EOT 49407, context 77).

Gives the same ids as OpenAI CLIP's `clip.tokenize`:
1. cleaning: `ftfy.fix_text`, HTML-unescape twice, strip, collapse whitespace runs to one
   space, lowercase;
2. pre-split (the `regex` package, case-insensitive) into the special tokens, the
   contractions 's 't 're 've 'm 'll 'd, letter runs, single digits and runs of other
   non-space characters;
3. each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte-to-unicode
   table), the last one marked with `</w>`, and merged by BPE rank;
4. [SOT] + ids + [EOT], zero-padded to the context length. Too long: `truncate=True` keeps
   the first `context_length` ids and makes the last one EOT; otherwise a ValueError (the
   reference raises RuntimeError).

The merges are CLIP's `bpe_simple_vocab_16e6.txt.gz` (MIT, from openai/CLIP; licence note in
`dinoseg/backbones/data/README.md`), shipped as package data and read with `importlib.resources`;
its SHA-256 is checked before use. `bpe_path=` reads another copy (.txt.gz or .txt), whose 48,894
merge lines are checked against their own digest.
"""
import functools
import gzip
import hashlib
import html
import importlib.resources
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

from dinoseg.errors import UserFileNotFoundError, UserValueError

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# The shipped file, package data of dinoseg.backbones: byte for byte openai/CLIP's clip/<BPE_FILE_NAME>.
BPE_RESOURCE = ("dinoseg.backbones", "data", BPE_FILE_NAME)
BPE_FILE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2  # 48,894 merge lines after the header line
# SHA-256 of the 48,894 merge lines joined with "\n" (checks a `bpe_path` copy, compressed or not).
MERGES_SHA256 = "f61f2adf497e6f5357c347aeb4646fabe82f341e946de5bdec5d2858e41bef4a"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
_SPLIT_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                  r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_CACHE_LIMIT = 200_000


def _merge_lines(data: bytes, source: str) -> list[str]:
  """The NUM_MERGES lines after the header line of the merges text `data`."""
  lines = data.split(b"\n", NUM_MERGES + 1)
  if len(lines) < NUM_MERGES + 1:
    raise UserValueError(f"{source}: the BPE merges text has {len(lines) - 1} merge lines, expected {NUM_MERGES}")
  return [line.decode("utf-8") for line in lines[1:NUM_MERGES + 1]]


def _decompressed(data: bytes) -> bytes:
  return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def shipped_bpe_bytes() -> bytes:
  """The shipped `bpe_simple_vocab_16e6.txt.gz` (compressed), checked against BPE_FILE_SHA256.

  Raises:
    UserValueError: the file differs from openai/CLIP's (a damaged installation).
  """
  package, folder, name = BPE_RESOURCE
  resource = importlib.resources.files(package) / folder / name
  data = resource.read_bytes()
  digest = hashlib.sha256(data).hexdigest()
  if digest != BPE_FILE_SHA256:
    raise UserValueError(f"{resource} is damaged: sha256 {digest}, expected {BPE_FILE_SHA256} "
                         "(openai/CLIP's bpe_simple_vocab_16e6.txt.gz); reinstall dinoseg")
  return data


@functools.lru_cache(maxsize=4)
def load_bpe_merges(bpe_path: str | None = None) -> tuple[tuple[str, str], ...]:
  """The 48,894 BPE merges, in rank order, from the shipped file or `bpe_path`.

  Raises:
    UserFileNotFoundError: no file at `bpe_path`.
    UserValueError: the merges are not CLIP's (SHA-256 checked).
  """
  if bpe_path is None:
    lines = _merge_lines(gzip.decompress(shipped_bpe_bytes()), BPE_FILE_NAME)
  else:
    path = pathlib.Path(os.fspath(bpe_path))
    if not path.is_file():
      raise UserFileNotFoundError(f"bpe_path {str(path)!r} is not a file")
    lines = _merge_lines(_decompressed(path.read_bytes()), str(path))
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    if digest != MERGES_SHA256:
      raise UserValueError(f"the BPE merges in {path} are not CLIP's bpe_simple_vocab_16e6 "
                           f"(sha256 {digest}, expected {MERGES_SHA256})")
  return tuple(tuple(line.split()) for line in lines)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
  """Byte -> printable character: printable Latin-1 bytes map to themselves, the 68 others
  (control characters, space, a few more) to chr(256 + n) in byte order."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  # Vocabulary order: the printable bytes first, then the remapped ones.
  return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


def basic_clean(text: str) -> str:
  """ftfy.fix_text, HTML-unescape twice, strip."""
  import ftfy  # noqa: PLC0415  (a dependency; imported lazily to keep `import dinoseg` light)
  return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def whitespace_clean(text: str) -> str:
  """Collapses runs of whitespace (Unicode-aware `\\s`) to one space and strips."""
  import regex  # noqa: PLC0415
  return regex.sub(r"\s+", " ", text).strip()


class ClipTokenizer:
  """CLIP's BPE tokenizer. Thread-compatible; holds a bounded cache of encoded words."""

  def __init__(self, bpe_path: str | os.PathLike | None = None):
    import regex  # noqa: PLC0415
    merges = load_bpe_merges(None if bpe_path is None else os.fspath(bpe_path))
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    symbols = list(self.byte_encoder.values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), SOT_TOKEN, EOT_TOKEN]
    self.encoder = {token: i for i, token in enumerate(vocab)}
    self.decoder = {i: token for token, i in self.encoder.items()}
    self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
    self._pattern = regex.compile(_SPLIT_PATTERN, regex.IGNORECASE)
    self._cache: dict[str, tuple[str, ...]] = {}
    if self.encoder[SOT_TOKEN] != SOT_ID or self.encoder[EOT_TOKEN] != EOT_ID:
      raise ValueError("the BPE merges give an unexpected vocabulary layout")

  @property
  def vocab_size(self) -> int:
    return len(self.encoder)

  def bpe(self, word: str) -> tuple[str, ...]:
    """BPE symbols of one pre-split word (already byte-mapped); the last carries `</w>`."""
    if word in (SOT_TOKEN, EOT_TOKEN):
      return (word,)
    cached = self._cache.get(word)
    if cached is not None:
      return cached
    symbols = (*word[:-1], word[-1] + "</w>")
    ranks = self.bpe_ranks
    while len(symbols) > 1:
      best, best_rank = None, None
      for pair in zip(symbols[:-1], symbols[1:]):
        rank = ranks.get(pair)
        if rank is not None and (best_rank is None or rank < best_rank):
          best, best_rank = pair, rank
      if best is None:
        break
      merged, i = [], 0
      while i < len(symbols):  # left to right, non-overlapping
        if i + 1 < len(symbols) and symbols[i] == best[0] and symbols[i + 1] == best[1]:
          merged.append(best[0] + best[1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = tuple(merged)
    if len(self._cache) >= _CACHE_LIMIT:
      self._cache.clear()
    self._cache[word] = symbols
    return symbols

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without SOT/EOT."""
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    text = whitespace_clean(basic_clean(text)).lower()
    ids = []
    for piece in self._pattern.findall(text):
      word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
      ids.extend(self.encoder[s] for s in self.bpe(word))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of token ids (`</w>` becomes a space; invalid UTF-8 is replaced)."""
    text = "".join(self.decoder[int(i)] for i in ids)
    data = bytearray(self.byte_decoder[c] for c in text)
    return data.decode("utf-8", errors="replace").replace("</w>", " ")

  def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
               truncate: bool = False) -> np.ndarray:
    """Tokenizes like `clip.tokenize`.

    Args:
      texts: one string or a sequence of strings.
      context_length: output length (77 for all CLIP models).
      truncate: cut too-long texts to `context_length` ids, the last one EOT.
    Returns:
      (N, context_length) int32 ids: SOT, text ids, EOT, zeros.
    Raises:
      ValueError: a text does not fit and `truncate` is False, or bad arguments.
    """
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = [SOT_ID, *self.encode(text), EOT_ID]
      if len(ids) > context_length:
        if not truncate:
          raise ValueError(f"text {row} ({len(ids)} tokens) is too long for context_length "
                           f"{context_length}; pass truncate=True to cut it: {text[:80]!r}")
        ids = ids[:context_length]
        ids[-1] = EOT_ID
      out[row, :len(ids)] = ids
    return out


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
  """A shared ClipTokenizer on the default merges source."""
  return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
             truncate: bool = False) -> np.ndarray:
  """`clip.tokenize` with the shared default tokenizer: (N, context_length) int32."""
  return default_tokenizer()(texts, context_length=context_length, truncate=truncate)
