"""Multi-scale deformable attention: public entry point `ms_deform_attn` and its implementations."""
from dinoseg.kernels.ms_deform_attn.api import IMPLEMENTATIONS, ms_deform_attn
from dinoseg.kernels.ms_deform_attn.pallas import BACKENDS as PALLAS_BACKENDS
from dinoseg.kernels.ms_deform_attn.pallas import ms_deform_attn_pallas
from dinoseg.kernels.ms_deform_attn.xla import ms_deform_attn_xla

__all__ = ["IMPLEMENTATIONS", "PALLAS_BACKENDS", "ms_deform_attn", "ms_deform_attn_pallas", "ms_deform_attn_xla"]
