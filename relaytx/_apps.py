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

from relaytx.errors import StartupError


def import_app(spec: str) -> ModuleType:
    """
    Import the app named by C{spec}: a path (it ends in C{.py} or contains a
    path separator) or a dotted module name.

    :raises StartupError: if it cannot be found or imported, or has no
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
                raise StartupError(f"--app {spec}: no such module") from None
            raise StartupError(f"--app {spec}: import failed: {e}") from None
        except Exception as e:
            raise StartupError(f"--app {spec}: import failed: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "setup", None)):
        raise StartupError(f"--app {spec}: the app defines no setup(node) function")
    return module


def _import_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise StartupError(f"--app {path}: no such file")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = "relaytx_app_" + re.sub(r"\W", "_", stem)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise StartupError(f"--app {path}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickling, dataclasses and typing find it
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise StartupError(f"--app {path}: import failed: {type(e).__name__}: {e}") from None
    return module


def run_setup(spec: str, module: ModuleType, node: Any) -> Deferred[None]:
    """
    Call C{module.setup(node)}.

    :returns: a Deferred that fires when setup is done, or fails with a
        L{StartupError} naming the app.
    """

    def failed(failure: Any) -> None:
        e = failure.value
        raise StartupError(f"--app {spec}: setup failed: {type(e).__name__}: {e}")

    d: Deferred[Any] = maybeDeferred(_call_setup, module, node)
    return d.addCallbacks(lambda _: None, failed)


def _call_setup(module: ModuleType, node: Any) -> Any:
    result = module.setup(node)
    # A Deferred is awaitable too: only a coroutine needs wrapping.
    if inspect.iscoroutine(result):
        return Deferred.fromCoroutine(result)
    return result
