"""`dinoseg convert --model NAME --from SRC --to DST`: PyTorch checkpoints <-> Flax (Orbax) weights.

SRC: a .pth/.pt, detectron2 .pkl or .safetensors file (read safely, see dinoseg.convert.readers), or an
Orbax directory (`dinoseg convert --to DIR` output, or a trainer step directory
`<workdir>/checkpoints/<step>` whose `state` item holds `params`). DST: a .pth, .safetensors or a new
Orbax directory (any other path). Every tensor passes through the model's key map, and every shape is
checked against the model's (with --config: `jax.eval_shape` of the task's init; with --model: the
converter's own model): missing or unexpected keys, shape mismatches (key, expected and found shape),
corrupt and unsafe files stop the conversion with one line and exit status 2; nothing is written
partially. `--list` shows the models.

OV2Seg exports (`--model=ov2seg_*` or an OV2Seg config, to .pth / .safetensors) hold the model's tensors only
unless given the vocabulary-dependent buffers the reference's `load_state_dict(strict=True)` expects:
`--vocabulary FILE.npy` adds `zs_weight` (from the (C, E) class embeddings, e.g. DetPro's
fg_bg_5_10_lvis_ens.npy) and `--category-image-counts FILE.json` (a JSON whose `categories` carry
`image_count`, e.g. LVIS v1 train) the criterion buffers (docs/ov2seg.md, Weights).
"""
import pathlib

from dinoseg.errors import UserValueError

HELP = "convert weights between PyTorch checkpoints and Flax/Orbax (--list shows the models)"
DESCRIPTION = ("Converts weights between PyTorch checkpoints (.pth/.pt, detectron2 .pkl, .safetensors) and "
               "Flax/Orbax directories, through a registered converter (--model, see --list) or the one of a "
               "config (--config). Keys and shapes are checked against the model; nothing is written partially.")

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".safetensors")
# Non-trainable Flax collections a model may have besides "params" (kept beside `params` in Orbax trees).
EXTRA_COLLECTIONS = ("frozen_bn",)


def add_arguments(parser):
  parser.add_argument("--model", help="converter name (see --list)")
  parser.add_argument("--config", help="config file[:variant]; the model name is config.model.name")
  parser.add_argument("--from", dest="src", help="source checkpoint file or Orbax directory")
  parser.add_argument("--to", dest="dst", help="destination .pth / .safetensors file or a new Orbax directory")
  parser.add_argument("--list", action="store_true", help="list the models that can be converted")
  parser.add_argument("--select-prefix", default=None,
                      help="keep only source keys starting with this prefix (stripped), e.g. 'backbone.' to take "
                           "the backbone out of a full system checkpoint; the number of dropped keys is printed")
  parser.add_argument("--wrap", default=None,
                      help="write the .pth state dict inside {WRAP: state_dict} (detectron2 files use 'model')")
  parser.add_argument("--ema", action="store_true",
                      help="from a trainer checkpoint, export the EMA weights (`ema_params`) instead of `params`")
  parser.add_argument("--no-torch", action="store_true", help="read .pth files with the torch-free reader")
  parser.add_argument("--force", action="store_true", help="overwrite an existing destination file")
  parser.add_argument("--verbose", action="store_true", help="print every converted array (path, shape, dtype)")
  parser.add_argument("--vocabulary", default=None, metavar="FILE.npy",
                      help="OV2Seg export: (C, E) class embeddings written as the reference's zs_weight buffer")
  parser.add_argument("--category-image-counts", default=None, metavar="FILE.json",
                      help="OV2Seg export: a JSON with 'categories' carrying 'image_count' (e.g. LVIS v1 train), "
                           "written as the reference's criterion buffers (freq_weight = count ** 0.5)")


def _is_torch_path(path: pathlib.Path) -> bool:
  return path.suffix.lower() in _TORCH_SUFFIXES


def _count(tree) -> tuple[int, int]:
  import numpy as np  # noqa: PLC0415
  leaves = []

  def walk(node):
    if isinstance(node, dict):
      for v in node.values():
        walk(v)
    else:
      leaves.append(node)

  walk(tree)
  return len(leaves), int(sum(np.size(x) for x in leaves))


def _abstract_of(task, variables: bool):
  """() -> the task's abstract variables (jax.eval_shape of its init, partitioning boxes removed), or
  their "params" for a params-only converter."""
  def abstract():
    import flax.linen as nn  # noqa: PLC0415
    import jax  # noqa: PLC0415
    tree = nn.meta.unbox(jax.eval_shape(task.init_variables, jax.random.key(0)))
    return tree if variables else tree["params"]
  return abstract


def _converter(args, overrides):
  """(converter, abstract): the converter named by --model, or the one of --config (`config.model.name`
  when the config names a registered converter, else the one its task builds from its model settings);
  `abstract` () -> the model's abstract variables to check shapes against (the config's task, else the
  converter's own), or None."""
  from dinoseg.convert import registry  # noqa: PLC0415
  if args.model:
    converter = registry.get(args.model)
    return converter, converter.abstract
  if not args.config:
    raise UserValueError("--model (or --config) is required")
  from dinoseg.config import load_config  # noqa: PLC0415
  from dinoseg.train import task as task_lib  # noqa: PLC0415
  config = load_config(args.config, overrides)
  task = task_lib.build(config) if "task" in config else None
  name = config.get("model", {}).get("name")
  converter = registry.get(str(name)) if name else task.weights_converter() if task is not None else None
  if converter is None:
    raise UserValueError(f"--config {args.config} has no model.name and its task builds no converter; "
                         "pass --model")
  return converter, _abstract_of(task, converter.variables) if task is not None else converter.abstract


def _check_shapes(converter, abstract, flax_tree, src) -> None:
  """Checks the converted tree (the converter's layout: params, or variables) against the model's shapes."""
  if abstract is None:
    return
  from dinoseg.convert.keymap import check_shapes  # noqa: PLC0415
  wrap = (lambda tree: dict(tree)) if converter.variables else (lambda tree: {"params": tree})  # noqa: E731
  check_shapes(wrap(flax_tree), wrap(abstract()), what=f"{src} (converter {converter.name})")


def _read_source(args, converter):
  """Returns the Flax tree the converter takes (params, or variables when converter.variables)."""
  import numpy as np  # noqa: PLC0415

  from dinoseg.convert import readers  # noqa: PLC0415
  src = pathlib.Path(args.src)
  if src.is_dir():
    tree = readers.read_orbax(src)
    key = "ema_params" if args.ema else "params"
    if not isinstance(tree.get(key), dict):
      raise UserValueError(f"{src}: the Orbax tree has no {key!r} entry (top-level keys: {sorted(tree)})")
    variables = {"params": tree[key], **{c: tree[c] for c in EXTRA_COLLECTIONS if c in tree}}
    n, size = _count(variables)
    print(f"read {n} arrays ({size:,} values) from Orbax checkpoint {src}")
    return variables if converter.variables else variables["params"], None
  obj = readers.read_checkpoint(src, use_torch=False if args.no_torch else None)
  if not isinstance(obj, dict):
    raise UserValueError(f"{src} holds a {type(obj).__name__}, not a state dict")
  for wrapper in ("model", "state_dict"):
    if isinstance(obj.get(wrapper), dict):
      others = sorted(k for k in obj if k != wrapper)
      print(f"using the {wrapper!r} entry of {src}" + (f" (ignoring {', '.join(others)})" if others else ""))
      obj = obj[wrapper]
      break
  state = {k: v for k, v in obj.items()}
  bad = sorted(k for k, v in state.items() if not isinstance(v, np.ndarray | np.generic))
  if bad:
    raise UserValueError(f"{src}: entries that are not tensors: {', '.join(bad[:10])}")
  if args.select_prefix:
    kept = {k[len(args.select_prefix):]: v for k, v in state.items() if k.startswith(args.select_prefix)}
    if not kept:
      raise UserValueError(f"no key of {src} starts with {args.select_prefix!r}")
    print(f"selected {len(kept)} keys under {args.select_prefix!r}, dropped {len(state) - len(kept)} others")
    state = kept
  n, size = _count(state)
  print(f"read {n} tensors ({size:,} values) from {src}")
  flax_tree = converter.to_flax(state)
  if args.verbose:
    from dinoseg.convert.keymap import flatten_variables  # noqa: PLC0415
    for path, value in flatten_variables(flax_tree).items():
      print(f"  {'/'.join(path)} {tuple(value.shape)} {value.dtype}")
  return flax_tree, state


def _write(args, converter, flax_tree) -> None:
  from dinoseg.convert import readers  # noqa: PLC0415
  dst = pathlib.Path(args.dst)
  if _is_torch_path(dst):
    if dst.suffix.lower() == ".pkl":
      raise UserValueError("writing .pkl is not supported; write .pth or .safetensors")
    if dst.exists() and not args.force:
      raise UserValueError(f"{dst} exists; pass --force to overwrite")
    state = converter.to_torch(flax_tree)
    state.update(_ov2seg_buffers(args, converter, state))
    if args.verbose:
      for key, value in state.items():
        print(f"  {key} {tuple(value.shape)} {value.dtype}")
    if dst.suffix.lower() == ".safetensors":
      readers.write_safetensors(state, dst)
    else:
      readers.write_pth(state, dst, wrap=args.wrap)
    n, size = _count(state)
    print(f"wrote {n} tensors ({size:,} values) to {dst}")
    return
  if getattr(args, "vocabulary", None) or getattr(args, "category_image_counts", None):
    raise UserValueError("--vocabulary / --category-image-counts add PyTorch buffers: write a .pth or .safetensors "
                         "file (Flax checkpoints take the vocabulary as an input, not a weight)")
  tree = flax_tree if converter.variables else {"params": flax_tree}
  readers.write_orbax(tree, dst)
  n, size = _count(tree)
  print(f"wrote {n} arrays ({size:,} values) to Orbax checkpoint {dst}")


def _ov2seg_buffers(args, converter, state) -> dict:
  """The OV2Seg reference buffers asked for by --vocabulary / --category-image-counts (module docstring)."""
  vocabulary_file = getattr(args, "vocabulary", None)
  counts_file = getattr(args, "category_image_counts", None)
  if not vocabulary_file and not counts_file:
    return {}
  from dinoseg.models.ov2seg import convert as ov2seg_convert, vocabulary  # noqa: PLC0415
  width_key = ov2seg_convert.ZS_WEIGHT.replace("zs_weight", "linear.2.weight")
  if width_key not in state:
    raise UserValueError(f"--vocabulary / --category-image-counts apply to OV2Seg exports, not {converter.name}")
  extra = {}
  num_classes = None
  if vocabulary_file:
    embeddings = vocabulary.read_class_embeddings(vocabulary_file, dim=int(state[width_key].shape[0]))
    extra[ov2seg_convert.ZS_WEIGHT] = ov2seg_convert.zs_weight(embeddings)
    num_classes = embeddings.shape[0]
  if counts_file:
    import json  # noqa: PLC0415
    try:
      categories = json.loads(pathlib.Path(counts_file).read_text(encoding="utf-8"))["categories"]
      counts = [int(c["image_count"]) for c in sorted(categories, key=lambda c: c["id"])]
    except FileNotFoundError:
      from dinoseg.errors import UserFileNotFoundError  # noqa: PLC0415
      raise UserFileNotFoundError(f"--category-image-counts: no such file: {counts_file}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserValueError(f"--category-image-counts {counts_file}: not a JSON with 'categories' carrying 'id' and "
                           f"'image_count' ({type(e).__name__}: {e})") from None
    if num_classes is not None and len(counts) != num_classes:
      raise UserValueError(f"--category-image-counts lists {len(counts)} categories but --vocabulary holds "
                           f"{num_classes} classes")
    extra.update(ov2seg_convert.criterion_buffers(num_classes or len(counts), counts))
  return extra


def _report_dropped(state, represented: set) -> None:
  """Prints the source keys the model does not use (ignored buffers, classification heads, ...) and
  the reference keys the source lacked (set by the converter, e.g. Swin output norms from ImageNet files)."""
  from dinoseg.convert.keymap import strip_prefix  # noqa: PLC0415
  best = max((set(state), set(strip_prefix(state, "backbone."))), key=lambda keys: len(keys & represented))
  if 2 * len(best & represented) < len(represented):
    print(f"{len(state)} source keys were renamed to {len(represented)} reference keys")
    return
  dropped, added = sorted(best - represented), sorted(represented - best)
  if dropped:
    print(f"dropped {len(dropped)} keys the model does not use: {', '.join(dropped[:20])}"
          + (" ..." if len(dropped) > 20 else ""))
  if added:
    print(f"{len(added)} keys were not in the source and were set by the converter: {', '.join(added[:20])}"
          + (" ..." if len(added) > 20 else ""))


def main(args, overrides) -> int:
  from dinoseg.convert import registry  # noqa: PLC0415
  if args.list:
    for name in registry.names():
      print(f"{name:32s} {registry.get(name).description}")
    return 0
  if not args.src or not args.dst:
    raise UserValueError("--from and --to are required (or --list)")
  converter, abstract = _converter(args, overrides)
  flax_tree, state = _read_source(args, converter)
  _check_shapes(converter, abstract, flax_tree, args.src)
  if state is not None:
    # Which source keys the model represents: export the converted tree and compare names.
    represented = set(converter.to_torch(flax_tree))
    n, size = _count(flax_tree)
    print(f"converted {len(represented)} tensors to {n} Flax arrays ({size:,} values) for {converter.name}")
    _report_dropped(state, represented)
  _write(args, converter, flax_tree)
  return 0
