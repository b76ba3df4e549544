"""Parameter models of the built-in components, and the model recipe: pure Pydantic.

They live apart from the components (which import torch, mup and timm) so that the spec layer
validates a spec, and ``specreach validate``/``schema`` answer, without importing any of those.
Each component still names its model as ``Params``; these are the same classes.
"""
