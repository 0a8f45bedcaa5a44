"""The conformance corpus every backend runs (a package: unique test names)."""
