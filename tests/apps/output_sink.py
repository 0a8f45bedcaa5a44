"""A custom stream class, as a Circus user writes one (test_output).

Each call's dict is recorded as a JSON line in the file named by the
``path`` option (``stdout_stream.path = ...``).
"""

import json


class Recorder:
    def __init__(self, path: str, **options: str) -> None:
        self.file = open(path, "a")  # noqa: SIM115 -- closed in close()
        self.options = options

    def __call__(self, data: dict) -> None:
        record = {
            "pid": data["pid"],
            "name": data["name"],
            "data": data["data"].decode("latin-1"),
            "options": self.options,
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
