"""What is specific to the paper "Spectral Reach": its figures (``report``, ``plots``) and the
random-feature predictions they compare against (``theory``). The measurement itself lives in
``specreach.lnp`` and the engine in ``specreach.engine``; nothing there imports this package
except the engine's end-of-run figures."""
