"""Callbacks for the training frameworks users already train with (optional extras):

- ``specreach.integrations.lightning.LNPCallback`` (``pip install 'specreach[lightning]'``);
- ``specreach.integrations.transformers.LNPTrainerCallback`` (``pip install 'specreach[transformers]'``).

Both are thin wrappers over :class:`specreach.engine.monitor.LNPMonitor`.
"""
