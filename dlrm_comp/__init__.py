"""dlrm_comp: DLRM training with the embedding all-to-all compressed in the loop."""
__version__ = "0.1.0"
