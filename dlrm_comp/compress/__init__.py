"""dlrm_comp.compress: error-bounded (and fixed-rate baseline) compression of embedding chunks.

Independent of the training code (imports nothing outside this package but ``dlrm_comp.checks``,
``dlrm_comp.runtime`` and ``dlrm_comp.stopwatch``). ``device/``: the Triton kernels of the
per-step transforms on CUDA, behind one switch (``DLRM_COMP_DEVICE_KERNELS``).
Entry points: ``modes.build_codec(mode, plan, cache, device)`` -> a ``codecs.base.ModeCodec``
(``encode`` / ``decode``, what the exchange runs), ``codecs.offline.roundtrip`` for the offline
tools, ``batch_quant.quantize_batch`` for the verified quantizer, ``wire.parse`` on the receiver,
``bounds.ErrorBoundPolicy`` for eb(t, i). The package imports none of them itself, so the config
(which holds `decay.DecaySchedule` and `bounds.TableBoundSpec`) loads without torch.
"""
