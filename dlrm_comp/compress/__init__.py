"""dlrm_comp.compress: error-bounded (and fixed-rate baseline) compression of embedding chunks.

Independent of the training code (imports nothing outside this package but ``dlrm_comp.checks``).
Entry points: ``backends.get_backend(mode)`` -> encode / decode / roundtrip,
``payload.decode_payload(bytes)`` on the receiver, ``bounds.ErrorBoundPolicy`` for eb(t, i),
``quantize.quantize`` / ``dequantize`` for the verified quantizer. The package imports none of
them itself, so the config (which holds `decay.DecaySchedule` and `bounds.TableBoundSpec`) loads
without torch.
"""
