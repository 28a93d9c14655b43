# -*- test-case-name: tests.test_apps -*-
"""
Loading apps: a Python module (by import name) or a C{.py} file that defines
C{setup(node)}. C{setup} is called once, may expose servers with
C{node.expose(name, server)} and may return a Deferred or be a coroutine.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from types import ModuleType
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

from relaytx._aio import CoroutineRunner, run_on_twisted
from relaytx.errors import StartupError


class AppError(StartupError):
    """
    An app could not be imported or its C{setup} failed. The message is
    one line that names where (file, line and function, when known); the
    exception itself, with its traceback, is C{failure}, for the log.

    @ivar failure: the app's exception, or C{None} when there is none to
        show (a missing file or module).
    """

    def __init__(self, message: str, failure: Failure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


def where(failure: Failure, path: str | None = None) -> str:
    """
    :param path: the app's file, if it is one: its innermost frame is
        named rather than a library's it called.
    :returns: C{" (at FILE:LINE, in FUNCTION)"} for the innermost frame of
        C{failure}'s traceback (of C{path}'s, when it has some), or nothing
        when the failure carries no traceback.
    """
    frames = [f for f in failure.frames if not f[1].startswith("<")]  # not <frozen ...>
    if path is not None:
        own = os.path.realpath(path)
        frames = [f for f in frames if os.path.realpath(f[1]) == own] or frames
    if not frames:
        return ""
    function, filename, line = frames[-1][:3]
    shown = os.path.relpath(filename)
    if shown.startswith(".."):
        shown = filename
    return f" (at {shown}:{line}, in {function})"


def import_app(spec: str) -> ModuleType:
    """
    Import the app named by C{spec}: a path (it ends in C{.py} or contains a
    path separator) or a dotted module name.

    :raises AppError: if it cannot be found or imported, or has no
        C{setup}.
    """
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        module = _import_file(spec)
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as e:
            # Only the app itself (or a package on its dotted path) missing is
            # "no such module"; a module the app imports is an import failure.
            if e.name and (spec == e.name or spec.startswith(e.name + ".")):
                raise AppError(f"--app {spec}: no such module") from None
            failure = Failure()
            raise AppError(f"--app {spec}: import failed: {e}{where(failure)}", failure) from None
        except Exception as e:
            failure = Failure()
            raise AppError(
                f"--app {spec}: import failed: {type(e).__name__}: {e}{where(failure)}", failure
            ) from None
    if not callable(getattr(module, "setup", None)):
        raise AppError(f"--app {spec}: the app defines no setup(node) function")
    return module


def _import_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise AppError(f"--app {path}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "relaytx_app_" + re.sub(r"\W", "_", stem)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AppError(f"--app {path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickling, dataclasses and typing find it
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        failure = Failure()
        message = f"{type(e).__name__}: {e}{where(failure, path)}"
        raise AppError(f"--app {path}: import failed: {message}", failure) from None
    return module


def run_setup(
    spec: str, module: ModuleType, node: Any, run_coroutine: CoroutineRunner = run_on_twisted
) -> Deferred[None]:
    """
    Call C{module.setup(node)}.

    :param run_coroutine: how a coroutine C{setup} runs (see L{relaytx._aio}).
    :returns: a Deferred that fires when setup is done, or fails with an
        L{AppError} naming the app and where its setup failed.
    """
    path = getattr(module, "__file__", None)

    def failed(failure: Failure) -> None:
        e = failure.value
        message = f"--app {spec}: setup failed: {type(e).__name__}: {e}{where(failure, path)}"
        raise AppError(message, failure)

    d: Deferred[Any] = maybeDeferred(_call_setup, module, node, run_coroutine)
    return d.addCallbacks(lambda _: None, failed)


def _call_setup(module: ModuleType, node: Any, run_coroutine: CoroutineRunner) -> Any:
    result = module.setup(node)
    # A Deferred is awaitable too: only a coroutine needs wrapping.
    if inspect.iscoroutine(result):
        return run_coroutine(result)
    return result
