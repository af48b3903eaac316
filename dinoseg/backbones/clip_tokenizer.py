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

The merges (`bpe_simple_vocab_16e6.txt.gz`, MIT, from openai/CLIP) are not part of dinoseg.
They are read, in this order, from:
- a file given as `bpe_path` (.txt.gz or .txt);
- an installed package that ships the file as package data (`open_clip` from
  open-clip-torch, `clip` from openai-clip / clip-anytorch); the package is located, not
  imported, so torch is not needed;
- the `instant-clip-tokenizer` package (a dinoseg dependency, MIT, needs only numpy), whose
  extension module embeds the same merges text.
Whatever the source, the 48,894 merges are checked against a SHA-256 digest.
"""
import functools
import gzip
import hashlib
import html
import importlib.util
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48,894 merge lines after the header line
# SHA-256 of the 48,894 merge lines joined with "\n" (the part of the file the tokenizer uses).
MERGES_SHA256 = "f61f2adf497e6f5357c347aeb4646fabe82f341e946de5bdec5d2858e41bef4a"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
# Installed packages that ship the merges file as package data: (import name, path inside).
PACKAGES_WITH_BPE_FILE = (("open_clip", BPE_FILE_NAME), ("clip", BPE_FILE_NAME))
# Installed package whose compiled module embeds the merges text after this header.
EMBEDDED_BPE_PACKAGE = "instant_clip_tokenizer"
_EMBEDDED_HEADER = b"#version: 0.2\n"
_SPLIT_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                  r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_CACHE_LIMIT = 200_000


def _package_dir(name: str) -> pathlib.Path | None:
  """Directory of an installed top-level package, found without importing it."""
  try:
    spec = importlib.util.find_spec(name)
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0])


def _merge_lines(data: bytes) -> list[str]:
  """The NUM_MERGES lines after the header line of the merges text `data`."""
  lines = data.split(b"\n", NUM_MERGES + 1)
  if len(lines) < NUM_MERGES + 1:
    raise ValueError(f"the BPE merges text has {len(lines) - 1} merge lines, expected {NUM_MERGES}")
  return [line.decode("utf-8") for line in lines[1:NUM_MERGES + 1]]


def _checked(lines: list[str], source: str) -> list[str]:
  digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
  if digest != MERGES_SHA256:
    raise ValueError(f"the BPE merges from {source} are not CLIP's bpe_simple_vocab_16e6 "
                     f"(sha256 {digest}, expected {MERGES_SHA256})")
  return lines


def _read_file(path: pathlib.Path) -> bytes:
  data = path.read_bytes()
  return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _embedded_merges() -> bytes | None:
  """The merges text embedded in instant-clip-tokenizer's extension module, if installed."""
  directory = _package_dir(EMBEDDED_BPE_PACKAGE)
  if directory is None:
    return None
  for path in sorted(directory.iterdir()):
    if path.name.startswith(EMBEDDED_BPE_PACKAGE) and path.suffix in (".so", ".pyd", ".dylib"):
      data = path.read_bytes()
      start = data.find(_EMBEDDED_HEADER)
      if start >= 0:
        return data[start:]
  return None


def find_bpe_source() -> str:
  """Where the merges would be read from by default (a file path or "<package>:embedded").

  Raises:
    FileNotFoundError: no source is installed (with the install command to fix it).
  """
  for package, relpath in PACKAGES_WITH_BPE_FILE:
    directory = _package_dir(package)
    if directory is not None and (directory / relpath).is_file():
      return str(directory / relpath)
  if _embedded_merges() is not None:
    return f"{EMBEDDED_BPE_PACKAGE}:embedded"
  raise FileNotFoundError(
      f"CLIP's BPE merges ({BPE_FILE_NAME}) were not found. Install `instant-clip-tokenizer` "
      f"(a dinoseg dependency), or `pip install --no-deps open-clip-torch` (or clip-anytorch), "
      f"or pass bpe_path= to ClipTokenizer.")


@functools.lru_cache(maxsize=4)
def load_bpe_merges(bpe_path: str | None = None) -> tuple[tuple[str, str], ...]:
  """The 48,894 BPE merges, in rank order, from `bpe_path` or the installed sources.

  Raises:
    FileNotFoundError: no file at `bpe_path` / no installed source.
    ValueError: the merges are not CLIP's (checked with MERGES_SHA256).
  """
  if bpe_path is not None:
    path = pathlib.Path(os.fspath(bpe_path))
    if not path.is_file():
      raise FileNotFoundError(f"bpe_path {str(path)!r} is not a file")
    lines = _checked(_merge_lines(_read_file(path)), str(path))
  else:
    source = find_bpe_source()
    if source.endswith(":embedded"):
      lines = _checked(_merge_lines(_embedded_merges()), source)
    else:
      lines = _checked(_merge_lines(_read_file(pathlib.Path(source))), source)
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
