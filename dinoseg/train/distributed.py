"""Multi-process set-up: `jax.distributed.initialize` from command-line flags or the environment.

Every process of a run calls `initialize(...)` before any JAX computation. Values come from the
arguments (the `--coordinator-address`, `--num-processes`, `--process-id` flags of `dinoseg
train/eval`), else from the environment variables

  DINOSEG_COORDINATOR_ADDRESS   host:port of process 0's coordinator service
  DINOSEG_NUM_PROCESSES         number of processes
  DINOSEG_PROCESS_ID            this process's index in [0, num_processes)

With none of them set the run is single-process, unless `auto=True` (`--distributed`), which
lets JAX detect the cluster itself (Cloud TPU pods, SLURM, Open MPI, Kubernetes JobSets).

CPU-only multi-process runs (tests, debugging) use JAX's gloo CPU collectives, the default of
`jax_cpu_collectives_implementation` in jax 0.10; e.g. two processes with four fake devices each:

  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
    dinoseg train --config=configs/toy/toy_segmentation.py:tiny --workdir=/tmp/mp \\
    --coordinator-address=localhost:12355 --num-processes=2 --process-id=0   # and =1 elsewhere
"""
import dataclasses
import os

from dinoseg.errors import UserValueError

ENV_COORDINATOR = "DINOSEG_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DINOSEG_NUM_PROCESSES"
ENV_PROCESS_ID = "DINOSEG_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Resolved settings; `enabled` False means a single-process run."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  auto: bool = False

  @property
  def enabled(self) -> bool:
    return self.auto or self.coordinator_address is not None


def _int(value, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except (TypeError, ValueError):
    raise UserValueError(f"{name} must be an integer, got {value!r}") from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None,
            *, auto: bool = False, environ=None) -> DistributedConfig:
  """Merges arguments over environment variables and checks them (UserValueError naming the setting)."""
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get(ENV_COORDINATOR) or None
  n = _int(num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES), "--num-processes")
  pid = _int(process_id if process_id is not None else env.get(ENV_PROCESS_ID), "--process-id")
  if address is None and (n is not None or pid is not None) and not auto:
    raise UserValueError(f"--num-processes/--process-id need --coordinator-address (or {ENV_COORDINATOR})")
  if address is not None and not auto:
    if n is None or pid is None:
      raise UserValueError("--coordinator-address needs --num-processes and --process-id "
                           f"(or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
    if n < 1:
      raise UserValueError(f"--num-processes must be >= 1, got {n}")
    if not 0 <= pid < n:
      raise UserValueError(f"--process-id must be in [0, {n}), got {pid}")
    if ":" not in address:
      raise UserValueError(f"--coordinator-address must be host:port, got {address!r}")
  return DistributedConfig(address, n, pid, auto)


def initialize(settings: DistributedConfig) -> bool:
  """Calls `jax.distributed.initialize` when `settings.enabled`; returns whether it did."""
  if not settings.enabled:
    return False
  import jax  # noqa: PLC0415
  kwargs = {}
  if settings.coordinator_address is not None:
    kwargs = dict(coordinator_address=settings.coordinator_address, num_processes=settings.num_processes,
                  process_id=settings.process_id)
  jax.distributed.initialize(**kwargs)
  return True


def add_arguments(parser) -> None:
  """The distributed flags shared by `dinoseg train` and `dinoseg eval`."""
  group = parser.add_argument_group("multi-process")
  group.add_argument("--coordinator-address", default=None,
                     help=f"host:port of process 0's coordinator (env {ENV_COORDINATOR})")
  group.add_argument("--num-processes", type=int, default=None, help=f"processes in the run (env {ENV_NUM_PROCESSES})")
  group.add_argument("--process-id", type=int, default=None, help=f"this process's index (env {ENV_PROCESS_ID})")
  group.add_argument("--distributed", action="store_true",
                     help="let JAX detect the cluster (TPU pods, SLURM, Open MPI) in jax.distributed.initialize()")


def from_args(args) -> DistributedConfig:
  return resolve(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)


__all__ = ["DistributedConfig", "resolve", "initialize", "add_arguments", "from_args", "ENV_COORDINATOR",
           "ENV_NUM_PROCESSES", "ENV_PROCESS_ID"]
