"""The built-in components, registered by name through the same hooks as any plugin, and the
built-in ``after_sweep`` hook that draws the training-dynamics figures.

Nothing here imports a component: each is imported the first time a run (or a listing of its
parameters) needs it. The parameter models of models and data sources live in
:mod:`specreach.params`, so a spec is validated without importing torch; estimators declare
``uses_probes`` (and theirs, in :mod:`specreach.params.estimators`) for the same reason, and every component a ``summary`` for ``specreach plugins``.
"""

from pathlib import Path

from specreach.plugins import hookimpl


@hookimpl
def register_estimators(register):
    estimators = "specreach.params.estimators"
    register("specreach.lnp.exact:Exact", name="exact", uses_probes=False, params=f"{estimators}:ExactParams",
             summary="exact per-sample Jacobian norms, one backward per output coordinate (classification, regression)")
    register("specreach.lnp.hutchinson:Hutchinson", name="hutchinson", uses_probes=True,
             params=f"{estimators}:HutchinsonParams",
             summary="Hutchinson estimate of the Jacobian norms from random probes, with standard errors "
                     "(language models)")
    register("specreach.lnp.entk:Entk", name="entk", uses_probes=False, params=f"{estimators}:EntkParams",
             summary="the explicit eNTK: its spectrum and the projections c_k (small models only)")


@hookimpl
def register_datasets(register):
    data = "specreach.params.data"
    register("specreach.data.powerlaw_teacher:PowerlawTeacher", name="powerlaw-teacher",
             params=f"{data}:PowerlawTeacherParams",
             summary="regression on power-law inputs, labels from a random-feature teacher")
    register("specreach.data.cifar5m:Cifar5m", name="cifar5m", params=f"{data}:Cifar5mParams",
             summary="CIFAR-5M parts on disk: classification or next-pixel prediction")
    register("specreach.data.simplestories:SimpleStories", name="simplestories",
             params=f"{data}:SimpleStoriesParams", summary="SimpleStories with its 4096-token tokenizer (a local copy)")
    register("specreach.data.text:TextFile", name="text-file", params=f"{data}:TextFileParams",
             summary="a local text file or folder, byte tokens or a BPE tokenizer")
    register("specreach.data.text:PydocText", name="pydoc-text", params=f"{data}:PydocTextParams",
             summary="the Python documentation's help topics as byte tokens (ships with Python)")
    register("specreach.data.digits:Digits", name="digits", params=f"{data}:DigitsParams",
             summary="scikit-learn's 8x8 handwritten digits (ships with scikit-learn)")


@hookimpl
def register_models(register):
    models = "specreach.params.models"
    register("specreach.models.builders:LlamaBuilder", name="llama", params=f"{models}:LlamaParams",
             summary="Llama-2 decoder: RMSNorm, rotary embeddings, SwiGLU")
    register("specreach.models.builders:ViTBuilder", name="vit", params=f"{models}:ViTParams",
             summary="Vision Transformer (timm)")
    register("specreach.models.builders:RandomFeaturesBuilder", name="random-features",
             params=f"{models}:RandomFeaturesParams", summary="frozen random ReLU features and a trained linear readout")


@hookimpl
def register_executors(register):
    executors = "specreach.engine.executors"  # their parameter models import no torch (nor Ray)
    register(f"{executors}.local:LocalExecutor", name="local", params=f"{executors}:NoParams",
             summary="one run after another, in this process")
    register(f"{executors}.processes:ProcessExecutor", name="processes", params=f"{executors}.processes:ProcessesParams",
             summary="worker processes on this machine")
    register(f"{executors}.ray:RayExecutor", name="ray", params=f"{executors}.ray:RayParams",
             summary="tasks on a Ray cluster")


@hookimpl
def register_layer_rules(register):
    register("specreach.models.layer_rules:MupReadoutRules", name="mup-readout", requires="mup",
             summary="per-sample rules of muP's MuReadout")
    register("specreach.models.layer_rules:TimmLayerNormRules", name="timm-layernorm", requires="timm",
             summary="per-sample rules of timm's LayerNorm and LayerNorm2d")
    register("specreach.models.layer_rules:TransformersConv1DRules", name="transformers-conv1d",
             requires="transformers", summary="per-sample rules of Hugging Face's Conv1D (GPT-2)")


@hookimpl
def register_sinks(register):
    register("specreach.engine.sinks:MlflowSink", name="mlflow", params="specreach.engine.sinks:NoParams",
             summary="one MLflow run per run, nested under the spec's parent run (tracking.uri)")
    register("specreach.engine.tensorboard_sink:TensorBoardSink", name="tensorboard",
             params="specreach.engine.tensorboard_sink:TensorBoardParams",
             summary="TensorBoard event files in each run folder (tensorboard --logdir OUTPUT/SPEC/runs)")


@hookimpl
def after_sweep(results, directory):
    """The training-dynamics figures under ``<output>/<spec>/plots`` (:mod:`specreach.paper.plots`)."""
    from specreach.paper.plots import plot_runs

    recorded = [result for result in results if result.metrics_path.exists()]
    return plot_runs(recorded, Path(directory) / "plots") if recorded else []
