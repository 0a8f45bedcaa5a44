"""The meinheld tests' app: the same probe the gevent tests use."""

from gevent_probe import HELLO, app  # noqa: F401  (imports no gevent)
