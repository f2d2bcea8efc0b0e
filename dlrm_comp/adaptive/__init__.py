"""Adaptive parts: the Btune-style lossless-stage tuner (``btune``); the bound controller lives in
``controller`` (a separate module)."""
from __future__ import annotations

from dlrm_comp.adaptive.btune import Btune, BtuneConfig, Candidate, SearchSpace, TunerResult, tune

__all__ = ["Btune", "BtuneConfig", "Candidate", "SearchSpace", "TunerResult", "tune"]
