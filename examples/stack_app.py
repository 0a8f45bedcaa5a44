"""The stack example's web app: queues jobs in Redis, reads their results.

GET /ping          -> PONG, from Redis
GET /jobs/NAME     -> queues NAME for the consumer (202)
GET /results/NAME  -> the consumer's result for NAME, or 404
"""

from __future__ import annotations

import os

from resp import Redis

REDIS_SOCKET = os.environ["REDIS_SOCKET"]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    redis = Redis(REDIS_SOCKET)
    try:
        status, body = route(redis, path)
    finally:
        redis.close()
    data = body.encode()
    start_response(status, [("Content-Length", str(len(data)))])
    return [data]


def route(redis: Redis, path: str) -> tuple[str, str]:
    if path == "/ping":
        return "200 OK", str(redis.call("PING"))
    if path.startswith("/jobs/"):
        redis.call("LPUSH", "jobs", path.removeprefix("/jobs/"))
        return "202 Accepted", "queued"
    if path.startswith("/results/"):
        result = redis.call("GET", "result:" + path.removeprefix("/results/"))
        return ("200 OK", str(result)) if result is not None else ("404 Not Found", "")
    return "404 Not Found", ""
