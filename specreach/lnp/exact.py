"""The ``exact`` estimator: χ_net = Σ_i Σ_k ‖∂f_{i,k}/∂θ‖², one backward per output coordinate k.

The backward of Σ_i f_{i,k} has per-sample gradients ∂f_{i,k}/∂θ, whose squared norms come
from the per-sample-norm tape; all d backwards share one forward. Cost: d backwards per
batch, so it is meant for small output dimensions (classification, regression). For a
language model (d = context × vocabulary) use ``hutchinson``.
"""

from __future__ import annotations

from torch import Tensor

from specreach.params.estimators import ExactParams
from specreach.lnp.estimator import PerSampleNormEstimator
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.probes import ProbeAccumulator
from specreach.lnp.problem import MeasurementProblem
from specreach.lnp.result import ChiNet


class Exact(PerSampleNormEstimator):
    name = "exact"
    Params = ExactParams

    def chi_net(self, tape: PerSampleNormTape, outputs: Tensor, problem: MeasurementProblem) -> ChiNet:
        accumulator = ProbeAccumulator(tape, outputs)
        coordinates = accumulator.coordinates
        if coordinates > self.params.max_outputs:
            raise ValueError(
                f"estimator 'exact' needs one backward pass per output coordinate: {coordinates} per sample "
                f"for this model (limit max_outputs={self.params.max_outputs}); use estimator='hutchinson', "
                "which needs one backward per probe whatever the output size"
            )
        n = outputs.shape[0]
        for coordinate in range(coordinates):
            vectors = outputs.new_zeros(n, coordinates)
            vectors[:, coordinate] = 1
            accumulator.add(vectors.reshape(accumulator.probe_shape))
        return accumulator.summed()
