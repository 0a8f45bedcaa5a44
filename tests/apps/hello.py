"""The smallest WSGI app: 13 bytes with a Content-Length."""

BODY = b"Hello, world!"


def app(environ, start_response):
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))],
    )
    return [BODY]


application = app


def create_app(greeting="Hello"):
    body = f"{greeting}, factory!".encode()

    def factory_app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return factory_app


class Holder:
    app = staticmethod(app)
