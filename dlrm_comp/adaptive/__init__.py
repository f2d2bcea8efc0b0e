"""Adaptive parts: the Btune-style lossless-stage tuner (``btune``), the per-table lossless
selector (``lossless_select``) and the bound controller (``controller``). The package imports
none of them itself, so the config (which holds `controller.ControllerConfig`) loads without them."""
