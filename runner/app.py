"""Load the user's application from an ``APP`` argument and tell its kind;
load the ``--pre-hook``/``--post-hook`` functions the same way.

Accepted forms:

- ``module:attr`` and ``module:attr.attr`` -- an attribute path;
- ``module:factory()`` -- call a factory; literal arguments are allowed,
  ``module:create_app("prod", debug=False)``, parsed with ``ast`` and never
  evaluated as code;
- ``module`` alone -- ``module:application``, the WSGI convention;
- ``package.module.attr`` -- chaussette's spelling (``server.app`` in
  Circus's documentation): when no module has the whole dotted name, the
  part after the last dot is the attribute;
- ``paste:path/to/app.ini#name`` -- a PasteDeploy application.

Errors distinguish a missing module (the path is wrong) from an exception
raised *inside* the user's module, which is shown with the user's traceback.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from juggler.backends.base import App, Interface
from juggler.runner.errors import (
    AppImportError,
    AppLoadError,
    HookError,
    UsageError,
)


@dataclass(frozen=True)
class AppSpec:
    """A parsed ``module:attr`` reference, or a PasteDeploy one."""

    module: str
    attrs: tuple[str, ...]
    call_args: tuple[Any, ...] | None = None  # None: not a factory call
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    paste_uri: str | None = None
    # No colon was given: a module alone, or chaussette's module.attr.
    bare: bool = False

    def __str__(self) -> str:
        if self.paste_uri is not None:
            return f"paste:{self.paste_uri}"
        text = f"{self.module}:{'.'.join(self.attrs)}"
        return text + ("()" if self.call_args is not None else "")


def parse_spec(text: str) -> AppSpec:
    """Parse an APP argument; raise ``UsageError`` for a malformed one."""
    if text.startswith("paste:"):
        uri = text.removeprefix("paste:")
        if not uri:
            raise UsageError('app "paste:" names no file (expected paste:FILE#name)')
        return AppSpec(module="", attrs=(), paste_uri=uri)

    module, sep, expr = text.partition(":")
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise UsageError(f'app "{text}" is not of the form module:attr')
    if not expr:
        return AppSpec(module=module, attrs=("application",), bare=not sep)
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise UsageError(
            f'app "{text}": "{expr}" is not an attribute path or a call '
            "(expected module:attr or module:factory())"
        ) from None
    return _spec_from_node(text, module, node)


def _spec_from_node(text: str, module: str, node: ast.expr) -> AppSpec:
    call_args: tuple[Any, ...] | None = None
    call_kwargs: tuple[tuple[str, Any], ...] = ()
    if isinstance(node, ast.Call):
        try:
            call_args = tuple(ast.literal_eval(arg) for arg in node.args)
            call_kwargs = tuple(
                (str(kw.arg), ast.literal_eval(kw.value)) for kw in node.keywords
            )
        except ValueError:
            raise UsageError(
                f'app "{text}": factory arguments must be literals '
                "(strings, numbers, True/False/None)"
            ) from None
        if any(kw.arg is None for kw in node.keywords):
            raise UsageError(f'app "{text}": **kwargs are not allowed')
        node = node.func
    attrs = _attribute_path(node)
    if attrs is None:
        raise UsageError(
            f'app "{text}" is not of the form module:attr, module:attr.attr '
            "or module:factory()"
        )
    return AppSpec(module, attrs, call_args, call_kwargs)


def _attribute_path(node: ast.expr) -> tuple[str, ...] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return tuple(reversed(parts))


def load_app(spec: AppSpec) -> App:
    """Import and return the application callable that ``spec`` names."""
    if spec.paste_uri is not None:
        return _load_paste(spec.paste_uri)
    dotted = spec.bare and "." in spec.module
    module = _import_module(spec.module, missing_ok=dotted)
    if module is None:
        return _load_dotted(spec)
    obj = _resolve(spec, module)
    if not callable(obj):
        raise AppLoadError(
            f'app "{spec}" is a {type(obj).__name__}, not a callable '
            "WSGI or ASGI application"
        )
    return obj  # type: ignore[no-any-return]


def _load_dotted(spec: AppSpec) -> App:
    """``a.b.c`` with no module ``a.b.c``: chaussette's ``a.b:c``."""
    name, _, attr = spec.module.rpartition(".")
    split = AppSpec(name, (attr,))
    module = _import_module(name)
    if not hasattr(module, attr):
        raise AppImportError(
            f'cannot import app "{spec.module}": there is no module of that '
            f'name, and module "{name}" has no attribute "{attr}" '
            f"(expected module:attr, as in {name}:app)"
        )
    return load_app(split)


def _resolve(spec: AppSpec, module: Any, example: str = "app") -> Any:
    """Follow the attribute path from ``module``; call it if a factory."""
    obj: Any = module
    for depth, attr in enumerate(spec.attrs):
        if not hasattr(obj, attr):
            owner = ".".join((spec.module, *spec.attrs[:depth]))
            kind = "module" if depth == 0 else "object"
            raise AppLoadError(
                f'{kind} "{owner}" has no attribute "{attr}" '
                f"(expected module:attr, as in {spec.module}:{example})"
            )
        obj = getattr(obj, attr)
    if spec.call_args is not None:
        obj = _call_factory(spec, obj)
    return obj


def load_hook(option: str, target: str) -> Callable[..., Any]:
    """Import the function a ``--pre-hook``/``--post-hook`` names.

    ``module:function``, or Circus's ``module.function``. Every error is
    worded as the option's, not the app's: ``--pre-hook "x:y": ...``.
    """
    spec = _hook_spec(option, target)
    try:
        module = _import_module(spec.module, what="module")
        hook = _resolve(spec, module, example="function")
    except AppLoadError as exc:
        raise HookError(
            f'{option} "{target}": {exc.message}', details=exc.details
        ) from None
    if not callable(hook):
        raise HookError(
            f'{option} "{target}" is a {type(hook).__name__}, not a function'
        )
    return hook  # type: ignore[no-any-return]


def _hook_spec(option: str, target: str) -> AppSpec:
    expected = UsageError(
        f'{option} "{target}": expected module:function or module.function'
    )
    try:
        spec = parse_spec(target)
    except UsageError:
        raise expected from None
    if spec.paste_uri is not None or spec.call_args is not None:
        raise expected
    if spec.bare:
        # A module is never a hook: the last dotted part is the function.
        name, _, attr = spec.module.rpartition(".")
        if not name:
            raise expected
        return AppSpec(name, (attr,))
    return spec


def _import_module(
    name: str, *, missing_ok: bool = False, what: str = "app module"
) -> Any:
    """Import ``name``; with ``missing_ok``, None when that very module
    does not exist (its package does). ``what`` names it in errors."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if missing_ok and exc.name == name:
            return None
        # The module itself (or a package above it) is missing: a path
        # problem. A missing module imported *by* the user's code is an
        # error inside their module and falls through to the next branch.
        if exc.name is not None and (
            name == exc.name or name.startswith(exc.name + ".")
        ):
            raise AppImportError(
                f'cannot import {what} "{name}": no module named '
                f'"{exc.name}" (working directory {os.getcwd()}; add its folder '
                "with --python-path)"
            ) from None
        raise _error_inside_module(name, exc, what) from None
    except Exception as exc:
        raise _error_inside_module(name, exc, what) from None


def _error_inside_module(name: str, exc: BaseException, what: str) -> AppImportError:
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" at {exc.filename}:{exc.lineno}"
    return AppImportError(
        f'{what} "{name}" raised {type(exc).__name__}{where} while importing: {exc}',
        details=user_traceback(exc),
    )


def _call_factory(spec: AppSpec, factory: Any) -> Any:
    if not callable(factory):
        raise AppLoadError(f'app factory "{spec}" is not callable')
    try:
        return factory(*(spec.call_args or ()), **dict(spec.call_kwargs))
    except Exception as exc:
        raise AppLoadError(
            f'app factory "{spec}" raised {type(exc).__name__}: {exc}',
            details=user_traceback(exc),
        ) from None


def user_traceback(exc: BaseException) -> str:
    """The traceback without the frames of importlib and of this module."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and frame.filename != __file__
    ]
    lines = traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "Traceback (most recent call last):\n" + "".join(lines).rstrip()


def _load_paste(uri: str) -> App:
    try:
        from paste.deploy import loadapp
    except ImportError:
        raise AppLoadError(
            "paste: apps need PasteDeploy; install it with: "
            "pip install 'juggler[paste]'"
        ) from None
    path, _, name = uri.partition("#")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise AppLoadError(f'PasteDeploy file "{path}" does not exist')
    try:
        app = loadapp(f"config:{path}" + (f"#{name}" if name else ""))
    except Exception as exc:
        raise AppLoadError(
            f'PasteDeploy app "{uri}" failed to load: {type(exc).__name__}: {exc}',
            details=user_traceback(exc),
        ) from None
    return app  # type: ignore[no-any-return]


def detect_interface(app: App) -> Interface:
    """Tell an ASGI app (a coroutine taking scope, receive, send) from WSGI."""
    if inspect.iscoroutinefunction(app):
        return "asgi"
    call = getattr(app, "__call__", None)  # noqa: B004 - we want the method
    if call is not None and inspect.iscoroutinefunction(call):
        return "asgi"
    return "wsgi"


def add_python_paths(paths: list[str]) -> None:
    """Put --python-path folders, in order, then the working directory,
    ahead of the rest of sys.path (each folder once)."""
    first = list(dict.fromkeys(os.path.abspath(p) for p in [*paths, os.getcwd()]))
    sys.path[:] = first + [p for p in sys.path if p not in first]
