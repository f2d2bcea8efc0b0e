"""DLRM model (pure torch)."""
from dlrm_comp.model.dlrm import DLRM, build_mlp, initial_table, interaction_width

__all__ = ["DLRM", "build_mlp", "initial_table", "interaction_width"]
