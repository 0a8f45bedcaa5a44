"""Tests of the backend adapters (a package: unique test module names)."""
