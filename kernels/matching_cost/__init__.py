"""The Hungarian-matching cost: public entry point `matching_cost` and its implementations."""
from dinoseg.kernels.matching_cost.api import IMPLEMENTATIONS, matching_cost
from dinoseg.kernels.matching_cost.formulas import CLASS_COSTS, CostWeights
from dinoseg.kernels.matching_cost.pallas import matching_cost_pallas
from dinoseg.kernels.matching_cost.xla import matching_cost_xla

__all__ = ["CLASS_COSTS", "CostWeights", "IMPLEMENTATIONS", "matching_cost", "matching_cost_pallas",
           "matching_cost_xla"]
