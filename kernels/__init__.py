"""dinoseg.kernels: Pallas kernels with plain-XLA twins (installed as `dinoseg.kernels`)."""
