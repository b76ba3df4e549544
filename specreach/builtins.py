"""The built-in components, registered by name through the same hooks as any plugin.

Nothing here imports a component: each is imported the first time a run (or a listing) needs
it. The parameter models of models and data sources live in :mod:`specreach.params`, so a spec
is validated without importing torch; estimators declare ``uses_probes`` for the same reason.
"""

from specreach.plugins import hookimpl


@hookimpl
def register_estimators(register):
    register("specreach.lnp.exact:Exact", name="exact", uses_probes=False)
    register("specreach.lnp.hutchinson:Hutchinson", name="hutchinson", uses_probes=True)
    register("specreach.lnp.entk:Entk", name="entk", uses_probes=False)


@hookimpl
def register_datasets(register):
    data = "specreach.params.data"
    register("specreach.data.powerlaw_teacher:PowerlawTeacher", name="powerlaw-teacher",
             params=f"{data}:PowerlawTeacherParams")
    register("specreach.data.cifar5m:Cifar5m", name="cifar5m", params=f"{data}:Cifar5mParams")
    register("specreach.data.simplestories:SimpleStories", name="simplestories", params=f"{data}:SimpleStoriesParams")
    register("specreach.data.text:TextFile", name="text-file", params=f"{data}:TextFileParams")
    register("specreach.data.text:PydocText", name="pydoc-text", params=f"{data}:PydocTextParams")
    register("specreach.data.digits:Digits", name="digits", params=f"{data}:DigitsParams")


@hookimpl
def register_models(register):
    models = "specreach.params.models"
    register("specreach.models.builders:LlamaBuilder", name="llama", params=f"{models}:LlamaParams")
    register("specreach.models.builders:ViTBuilder", name="vit", params=f"{models}:ViTParams")
    register("specreach.models.builders:RandomFeaturesBuilder", name="random-features",
             params=f"{models}:RandomFeaturesParams")


@hookimpl
def register_executors(register):
    register("specreach.engine.executors.local:LocalExecutor", name="local")
    register("specreach.engine.executors.processes:ProcessExecutor", name="processes")
    register("specreach.engine.executors.ray:RayExecutor", name="ray")


@hookimpl
def register_layer_rules(register):
    register("specreach.models.layer_rules:MupReadoutRules", name="mup-readout", requires="mup")
    register("specreach.models.layer_rules:TimmLayerNormRules", name="timm-layernorm", requires="timm")
