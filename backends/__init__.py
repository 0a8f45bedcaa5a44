"""HTTP backends for the runner: one module per server, plus the registry.

See ``juggler.backends.base`` for the contract a backend fulfils and
``juggler.backends.registry`` for how one is found by name.
"""
