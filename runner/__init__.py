"""The worker: serves a WSGI or ASGI app on an inherited listening socket.

``runner serve --fd 3 myapp:app`` loads the app, picks a backend from
``juggler.backends`` and serves until SIGTERM, draining in-flight requests.
"""
