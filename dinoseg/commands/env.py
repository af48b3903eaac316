"""`dinoseg env`: versions, devices and platform, to paste into bug reports."""
import importlib.metadata
import json
import platform
import sys

HELP = "print package versions, JAX devices and the platform"

PACKAGES = ("dinoseg", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "array-record",
            "tensorflow-datasets", "numpy", "scipy", "ml-collections", "pycocotools", "einops", "torch")


def add_arguments(parser):
  parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def collect() -> dict:
  import jax  # noqa: PLC0415  (heavy import only when the command runs)

  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  try:
    from jax.experimental import pallas  # noqa: F401, PLC0415
    pallas_ok = True
  except Exception:  # pragma: no cover - depends on the install
    pallas_ok = False
  return {
      "python": sys.version.split()[0],
      "platform": platform.platform(),
      "machine": platform.machine(),
      "versions": versions,
      "backend": jax.default_backend(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "local_device_count": jax.local_device_count(),
      "device_count": jax.device_count(),
      "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
      "pallas": pallas_ok,
  }


def main(args, overrides) -> int:
  info = collect()
  if args.json:
    print(json.dumps(info, indent=2))
    return 0
  print(f"python      {info['python']} on {info['platform']}")
  for name, version in info["versions"].items():
    print(f"{name:<20}{version or '(not installed)'}")
  print(f"backend     {info['backend']}  (process {info['process_index']} of {info['process_count']})")
  print(f"devices     {info['device_count']} total, {info['local_device_count']} local")
  for d in info["devices"]:
    print(f"  {d}")
  print(f"pallas      {'importable' if info['pallas'] else 'not importable'}")
  return 0
