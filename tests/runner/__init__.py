"""Tests of the runner CLI and boot (a package: unique test module names)."""
