"""Config generation for nginx and every configuration (no process runs)."""

from bench import nginx, stacks


def test_nginx_proxies_with_upstream_keepalive_and_http11():
    conf = nginx.render("/tmp/x", 8123, "unix:/tmp/x/web.sock")
    assert "worker_processes 1;" in conf
    assert "server unix:/tmp/x/web.sock;" in conf
    assert "keepalive 32;" in conf
    assert "proxy_http_version 1.1;" in conf
    assert 'proxy_set_header Connection "";' in conf
    assert "access_log off;" in conf
    assert "listen 127.0.0.1:8123;" in conf
    assert "return 200" not in conf


def test_nginx_proxies_to_a_tcp_upstream():
    conf = nginx.render("/tmp/x", 8123, "127.0.0.1:9000")
    assert "server 127.0.0.1:9000;" in conf


def test_nginx_ceiling_answers_by_itself():
    conf = nginx.render("/tmp/x", 8123, None)
    assert 'return 200 "Hello, world!";' in conf
    assert "upstream" not in conf
    assert "proxy_pass" not in conf


def test_juggler_config_is_a_circus_style_watcher_on_the_socket():
    cmd = stacks.runner_args("/v/bin/runner", "gevent", "$(circus.sockets.web)", "/r")
    ini = stacks.juggler_ini("unix:/t/web.sock", cmd, 2, "notify")
    assert "[socket:web]\npath = /t/web.sock\n" in ini
    assert (
        "cmd = /v/bin/runner serve --fd $(circus.sockets.web) --backend gevent "
        "--python-path /r bench.apps:wsgi_gevent\n"
    ) in ini
    assert "numprocesses = 2\n" in ini
    assert "ready = notify\n" in ini


def test_tcp_socket_section():
    assert stacks.socket_section("127.0.0.1:9000") == (
        "[socket:web]\nhost = 127.0.0.1\nport = 9000\n"
    )


def test_circus_config_uses_private_endpoints_and_no_stats():
    ini = stacks.circus_ini("/t", "unix:/t/web.sock", ["chaussette", "x"], 2)
    assert "endpoint = ipc:///t/circus-control\n" in ini
    assert "pubsub_endpoint = ipc:///t/circus-pubsub\n" in ini
    assert "stats_endpoint" not in ini
    assert "use_sockets = true\n" in ini
    assert "check_delay = 5\n" in ini


def test_gunicorn_gets_the_matching_worker():
    expected = {
        "gevent": ["-k", "gevent"],
        "meinheld": ["-k", "meinheld.gmeinheld.MeinheldWorker"],
        "wsgiref": ["-k", "gthread", "--threads", "32"],
        "waitress": ["-k", "gthread", "--threads", "4"],
        "uvicorn": ["-k", "uvicorn_worker.UvicornWorker"],
    }
    for backend, worker in expected.items():
        args = stacks.gunicorn_args("gunicorn", backend, "unix:/t/w.sock", 2, "/r")
        joined = " ".join(args)
        assert " ".join(worker) in joined, backend
        assert "--bind unix:/t/w.sock" in joined
        assert "--workers 2" in joined
        assert args[-1] == stacks.app_for(backend)


def test_apps_per_backend():
    assert stacks.app_for("uvicorn") == "bench.apps:asgi"
    assert stacks.app_for("gevent") == "bench.apps:wsgi_gevent"
    assert stacks.app_for("meinheld") == "bench.apps:wsgi"


def test_limit_parent_command_has_an_fd_placeholder():
    args = stacks.parent_args(
        "/py", 2, "unix:/t/w.sock", "/v/runner", backend="meinheld", root="/r"
    )
    assert args[:5] == ["/py", "-m", "bench.parent", "2", "unix:/t/w.sock"]
    assert "{fd}" in args
