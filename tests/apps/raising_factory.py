def create_app():
    raise RuntimeError("database unreachable")


not_callable = 42
