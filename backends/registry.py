"""Find a backend by name without importing any server package.

The built-in backends are a table of ``name -> "module:Class"`` strings;
third-party packages add theirs through the ``juggler.backends`` entry-point
group, for example in their pyproject.toml::

    [project.entry-points."juggler.backends"]
    bjoern = "juggler_bjoern:BjoernBackend"

Nothing is imported until ``load`` is called for one name: importing gevent
(and monkey-patching) must only ever happen in the worker that uses it.
"""

from __future__ import annotations

import importlib

from juggler.backends.base import Backend
from juggler.runner.errors import BackendUnavailable, BootError

ENTRY_POINT_GROUP = "juggler.backends"

BUILTIN: dict[str, str] = {
    "wsgiref": "juggler.backends.wsgiref:WsgirefBackend",
    "gevent": "juggler.backends.gevent:GeventBackend",
    "meinheld": "juggler.backends.meinheld:MeinheldBackend",
    "waitress": "juggler.backends.waitress:WaitressBackend",
    "werkzeug": "juggler.backends.werkzeug:WerkzeugBackend",
    "uvicorn": "juggler.backends.uvicorn:UvicornBackend",
    "hypercorn": "juggler.backends.hypercorn:HypercornBackend",
}

# What ``--backend auto`` picks for each interface.
DEFAULT_FOR_INTERFACE = {"wsgi": "wsgiref", "asgi": "uvicorn"}


def _third_party() -> dict[str, str]:
    # Imported here: importlib.metadata costs a worker ~25 ms at boot, and a
    # built-in backend never needs it.
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    """Every backend name: built-in ones first, then third-party ones."""
    extra = [name for name in _third_party() if name not in BUILTIN]
    return [*BUILTIN, *sorted(extra)]


def target(name: str) -> str:
    """The ``module:Class`` a name stands for; a built-in name wins."""
    if name in BUILTIN:
        return BUILTIN[name]
    third_party = _third_party()
    if name in third_party:
        return third_party[name]
    known = ", ".join(names())
    # A boot failure (exit 3), not a usage error: to a supervisor it is a
    # backend missing from this installation, and respawning cannot help.
    raise BackendUnavailable(f'unknown backend "{name}" (known backends: {known})')


def load(name: str) -> Backend:
    """Import the adapter class for ``name`` and return an instance of it.

    The adapter module imports its server package lazily (in ``prepare``),
    so this succeeds even when that package is missing.
    """
    module_name, _, attr = target(name).partition(":")
    try:
        module = importlib.import_module(module_name)
        backend_class = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise BootError(
            f'backend "{name}" points at {module_name}:{attr}, which cannot be '
            f"loaded: {exc}"
        ) from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, Backend)):
        raise BootError(
            f'backend "{name}" points at {module_name}:{attr}, which is not a '
            "juggler.backends.base.Backend subclass"
        )
    return backend_class()
