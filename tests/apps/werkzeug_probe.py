"""The probe app of the waitress tests, served by the werkzeug tests."""

from waitress_probe import app

__all__ = ["app"]
