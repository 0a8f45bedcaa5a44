"""An app whose module the tests rewrite, to make a restart fail."""

from hello import app  # noqa: F401
