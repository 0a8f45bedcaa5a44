"""``dotted_pkg.web`` serves ``application``; ``dotted_pkg.web.app`` its ``app``."""


def _answer(body):
    def wsgi_app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    return wsgi_app


app = _answer(b"dotted app")
application = _answer(b"dotted application")
