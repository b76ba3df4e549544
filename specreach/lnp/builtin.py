"""The built-in estimators, registered through the same hook as any plugin."""

from specreach.lnp.entk import Entk
from specreach.lnp.exact import Exact
from specreach.lnp.hutchinson import Hutchinson
from specreach.plugins import hookimpl


@hookimpl
def register_estimators(register):
    register(Exact)
    register(Hutchinson)
    register(Entk)
