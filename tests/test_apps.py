"""
Tests for L{relaytx._apps}: loading apps by file path or module name and
running their C{setup(node)}, through L{RelayNode.load_app}.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
import textwrap
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relaytx._apps import AppError, import_app, run_setup, where
from relaytx.config import build_config
from relaytx.errors import StartupError
from relaytx.node import RelayNode
from tests.support import TempDirMixin

_names = itertools.count()


ECHO_APP = """
from relaytx import Server, exposed


class Echo(Server):
    @exposed
    def say(self, text):
        return "echo: " + text


def setup(node):
    node.expose("echo_server", Echo())
"""


class AppTestCase(TempDirMixin, SynchronousTestCase):
    """Helpers: a node on a fake reactor, and apps written to temporary files."""

    def setUp(self) -> None:
        self.fatal: list[str] = []
        self.node = RelayNode(
            build_config({"node_id": "n1"}), MemoryReactorClock(), on_fatal=self.fatal.append
        )

    def app_file(self, source: str, name: str = "app.py") -> str:
        """Write C{source} to a new file called C{name} and return its path."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        return path

    def app_module(self, source: str, package: bool = False) -> str:
        """
        Write C{source} as a new importable module (or C{package.app} when
        C{package}) and return its dotted name.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        top = f"relaytx_test_app_{next(_names)}"
        name = top
        if package:
            os.makedirs(os.path.join(directory, top))
            with open(os.path.join(directory, top, "__init__.py"), "w"):
                pass
            path = os.path.join(directory, top, "app.py")
            name = f"{top}.app"
        else:
            path = os.path.join(directory, f"{top}.py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
        self.patch(sys, "path", [directory, *sys.path])
        importlib.invalidate_caches()

        def forget() -> None:
            for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[loaded]

        self.addCleanup(forget)
        return name

    def assertStartupError(self, spec: str, *fragments: str) -> StartupError:
        """Loading C{spec} raises a one-line StartupError naming it and containing C{fragments}."""
        e = self.assertRaises(StartupError, self.node.load_app, spec)
        text = str(e)
        self.assertNotIn("\n", text)
        self.assertTrue(text.startswith(f"--app {spec}: "), text)
        for fragment in fragments:
            self.assertIn(fragment, text)
        return e

    def call(self, server: str, method: str, *args: Any) -> Any:
        """Call a local server's method and return its result."""
        return self.successResultOf(self.node.call(None, server, method, *args))


class LoadByPathTests(AppTestCase):
    """Apps given as a path to a .py file."""

    def test_loadFile(self) -> None:
        """A .py file's setup(node) runs at once and its servers can be called."""
        path = self.app_file(ECHO_APP)
        d = self.node.load_app(path)
        self.assertIsNone(self.successResultOf(d))
        self.assertIn("echo_server", self.node.local_servers())
        self.assertEqual(self.node.local_servers()["echo_server"], ["say"])
        self.assertEqual(self.call("echo_server", "say", "hi"), "echo: hi")

    def test_setupGetsTheNode(self) -> None:
        """setup() is called once, with the node itself."""
        path = self.app_file(
            """
            calls = []
            def setup(node):
                calls.append(node)
            """
        )
        module = import_app(path)
        self.successResultOf(run_setup(path, module, self.node))
        self.assertEqual(module.calls, [self.node])

    def test_oddFileName(self) -> None:
        """A file name with dashes, dots or spaces still loads."""
        for name in ["my-app.py", "my.app.v2.py", "my app.py"]:
            node = RelayNode(build_config({"node_id": "n1"}), MemoryReactorClock())
            self.successResultOf(node.load_app(self.app_file(ECHO_APP, name)))
            self.assertIn("echo_server", node.local_servers())

    def test_pathWithoutSuffix(self) -> None:
        """A path containing a separator is a file even without .py."""
        path = self.app_file(ECHO_APP, "app_without_suffix")
        self.assertStartupError(path, "not a Python file")

    def test_missingFile(self) -> None:
        """A missing file is one clear error."""
        path = os.path.join(self.mktemp(), "nowhere.py")
        self.assertStartupError(path, "no such file")
        self.assertStartupError("nowhere.py", "no such file")

    def test_directory(self) -> None:
        """A directory is not an app file."""
        directory = self.mktemp()
        os.makedirs(directory)
        self.assertStartupError(directory + "/", "no such file")

    def test_noSetup(self) -> None:
        """A file without setup(node) is refused."""
        self.assertStartupError(self.app_file("x = 1\n"), "defines no setup(node)")

    def test_setupNotCallable(self) -> None:
        """A setup that is not callable is refused."""
        self.assertStartupError(self.app_file("setup = 5\n"), "defines no setup(node)")

    def test_importRaises(self) -> None:
        """An exception at import time is reported with its type and message."""
        path = self.app_file("raise ValueError('bad config')\ndef setup(node): pass\n")
        self.assertStartupError(path, "import failed", "ValueError: bad config")
        self.assertNotIn("relaytx_app_app", sys.modules)

    def test_importsMissingModule(self) -> None:
        """A file importing a missing module says which module is missing."""
        path = self.app_file("import relaytx_no_such_dependency\ndef setup(node): pass\n")
        self.assertStartupError(path, "import failed", "relaytx_no_such_dependency")

    def test_syntaxError(self) -> None:
        """A syntax error is reported on one line."""
        self.assertStartupError(self.app_file("def setup(node)\n  pass\n"), "SyntaxError")


class LoadByNameTests(AppTestCase):
    """Apps given as a dotted module name."""

    def test_loadModule(self) -> None:
        """An importable module's setup(node) runs and exposes its servers."""
        name = self.app_module(ECHO_APP)
        self.successResultOf(self.node.load_app(name))
        self.assertEqual(self.call("echo_server", "say", "x"), "echo: x")

    def test_loadPackageModule(self) -> None:
        """A module inside a package loads by its dotted name."""
        name = self.app_module(ECHO_APP, package=True)
        self.assertIn(".", name)
        self.successResultOf(self.node.load_app(name))
        self.assertIn("echo_server", self.node.local_servers())

    def test_noSuchModule(self) -> None:
        """An unknown module name is 'no such module'."""
        self.assertStartupError("relaytx_no_such_app_module", "no such module")

    def test_noSuchSubmodule(self) -> None:
        """An unknown module in an existing package is 'no such module'."""
        self.assertStartupError("relaytx.no_such_app", "no such module")

    def test_moduleImportsMissingModule(self) -> None:
        """A module whose own import fails is 'import failed', naming what is missing."""
        name = self.app_module("import relaytx_missing_dep\ndef setup(node): pass\n")
        self.assertStartupError(name, "import failed", "relaytx_missing_dep")

    def test_missingPrefixOfTheName(self) -> None:
        """A missing import whose name is a prefix of the app's name is still 'import failed'."""
        name = self.app_module("import relaytx_test_ap\ndef setup(node): pass\n")
        self.assertTrue(name.startswith("relaytx_test_ap"))
        self.assertStartupError(name, "import failed", "relaytx_test_ap")

    def test_moduleRaises(self) -> None:
        """An exception while importing a module is reported with its type."""
        name = self.app_module("raise RuntimeError('nope')\n")
        self.assertStartupError(name, "import failed", "RuntimeError: nope")

    def test_moduleWithoutSetup(self) -> None:
        """An importable module without setup is refused."""
        self.assertStartupError("json", "defines no setup(node)")


class SetupTests(AppTestCase):
    """What setup(node) may do: raise, return a Deferred, be a coroutine."""

    def test_setupRaises(self) -> None:
        """A setup that raises stops load_app at once with the exception's type and message."""
        path = self.app_file("def setup(node):\n    raise RuntimeError('boom')\n")
        self.assertStartupError(path, "setup failed: RuntimeError: boom")
        self.assertEqual(self.node._setups, [])

    def test_setupExposesTwice(self) -> None:
        """A setup that exposes a taken name fails with the node's ValueError."""
        source = ECHO_APP.replace(
            'node.expose("echo_server", Echo())', 'node.expose("node", Echo())'
        )
        self.assertStartupError(self.app_file(source), "setup failed: ValueError", "'node'")

    def test_setupReturnValueIgnored(self) -> None:
        """Whatever a synchronous setup returns, loading fires with None."""
        path = self.app_file("def setup(node):\n    return 42\n")
        self.assertIsNone(self.successResultOf(self.node.load_app(path)))

    def test_deferredSetup(self) -> None:
        """A setup returning a Deferred is done when that Deferred fires."""
        path = self.app_file("def setup(node):\n    return node.test_deferred\n")
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        d = self.node.load_app(path)
        self.assertNoResult(d)
        self.node.test_deferred.callback("ignored")  # type: ignore[attr-defined]
        self.assertIsNone(self.successResultOf(d))

    def test_deferredSetupFailsLater(self) -> None:
        """run_setup fails with a StartupError naming the app when setup's Deferred fails later."""
        path = self.app_file("def setup(node):\n    return node.test_deferred\n")
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        d = run_setup(path, import_app(path), self.node)
        self.assertNoResult(d)
        self.node.test_deferred.errback(RuntimeError("late boom"))  # type: ignore[attr-defined]
        failure = self.failureResultOf(d, StartupError)
        self.assertEqual(str(failure.value), f"--app {path}: setup failed: RuntimeError: late boom")

    def test_nodeReportsLateSetupFailure(self) -> None:
        """When an app's setup Deferred fails after start-up, the node's on_fatal gets one line."""
        path = self.app_file("def setup(node):\n    return node.test_deferred\n")
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        self.node.load_app(path)
        self.node.startService()
        self.addCleanup(self.node.stopService)
        self.node.test_deferred.errback(RuntimeError("late boom"))  # type: ignore[attr-defined]
        self.assertEqual(self.fatal, [f"--app {path}: setup failed: RuntimeError: late boom"])

    def test_nodeReportsEarlySetupFailure(self) -> None:
        """A setup Deferred that failed before start-up is reported when the node starts."""
        path = self.app_file("def setup(node):\n    return node.test_deferred\n")
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        self.node.load_app(path)
        self.node.test_deferred.errback(RuntimeError("early"))  # type: ignore[attr-defined]
        self.node.startService()
        self.addCleanup(self.node.stopService)
        self.assertEqual(self.fatal, [f"--app {path}: setup failed: RuntimeError: early"])

    def test_asyncSetup(self) -> None:
        """An async def setup runs as a coroutine; loading fires when it returns."""
        path = self.app_file(
            ECHO_APP.replace(
                "def setup(node):", "async def setup(node):\n    await node.test_deferred"
            )
        )
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        d = self.node.load_app(path)
        self.assertNoResult(d)
        self.assertNotIn("echo_server", self.node.local_servers())
        self.node.test_deferred.callback(None)  # type: ignore[attr-defined]
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.call("echo_server", "say", "a"), "echo: a")

    def test_asyncSetupRaisesAtOnce(self) -> None:
        """An async setup that raises before its first await fails load_app at once."""
        path = self.app_file("async def setup(node):\n    raise KeyError('k')\n")
        self.assertStartupError(path, "setup failed: KeyError: 'k'")

    def test_asyncSetupFailsLater(self) -> None:
        """An async setup that raises after an await fails run_setup's Deferred then."""
        path = self.app_file(
            "async def setup(node):\n    await node.test_deferred\n    raise OSError('gone')\n"
        )
        self.node.test_deferred = Deferred()  # type: ignore[attr-defined]  # read by the app
        d = run_setup(path, import_app(path), self.node)
        self.assertNoResult(d)
        self.node.test_deferred.callback(None)  # type: ignore[attr-defined]
        failure = self.failureResultOf(d, StartupError)
        self.assertIn("setup failed: OSError: gone", str(failure.value))

    def test_twoApps(self) -> None:
        """Several apps load into one node."""
        first = self.app_file(ECHO_APP)
        second = self.app_file(ECHO_APP.replace('"echo_server"', '"echo2"'), "other.py")
        self.successResultOf(self.node.load_app(first))
        self.successResultOf(self.node.load_app(second))
        self.assertEqual(sorted(self.node.local_servers()), ["echo2", "echo_server", "node"])


class WhereTests(AppTestCase):
    """A failing app's error line says where it failed; its exception keeps the traceback."""

    def test_setupRaisesDeeper(self) -> None:
        """The line names the app's innermost frame (file, line, function)."""
        path = self.app_file(
            """
            def helper():
                return {}["missing"]

            def setup(node):
                helper()
            """
        )
        error = self.assertStartupError(path, "setup failed: KeyError: 'missing'")
        self.assertTrue(str(error).endswith(":3, in helper)"), str(error))
        shown = os.path.relpath(path)  # or the path itself, when it is not below here
        self.assertIn(f"(at {path if shown.startswith('..') else shown}:3", str(error))
        assert isinstance(error, AppError) and error.failure is not None
        self.assertIn('return {}["missing"]', error.failure.getTraceback())

    def test_setupCallsALibrary(self) -> None:
        """When a library raises, the line names the app's own call into it."""
        path = self.app_file(
            """
            import json

            def setup(node):
                json.loads("{")
            """
        )
        error = self.assertStartupError(path, "setup failed: JSONDecodeError")
        self.assertTrue(str(error).endswith(":5, in setup)"), str(error))

    def test_importFails(self) -> None:
        """An import that fails names the app's line too."""
        path = self.app_file("x = 1\nimport relaytx_absent_dependency\ndef setup(node): pass\n")
        error = self.assertStartupError(path, "import failed")
        self.assertTrue(str(error).endswith(":2, in <module>)"), str(error))

    def test_moduleImportFails(self) -> None:
        """A module app's failed import names the module's line, not importlib's."""
        name = self.app_module("import relaytx_absent_dep\ndef setup(node): pass\n")
        error = self.assertStartupError(name, "import failed")
        self.assertIn(":1, in <module>)", str(error))
        self.assertNotIn("frozen", str(error))

    def test_nothingToShow(self) -> None:
        """A missing file or a failure without a traceback names no place."""
        error = self.assertStartupError(self.app_file(ECHO_APP) + ".nope.py", "no such file")
        self.assertNotIn("(at ", str(error))
        assert isinstance(error, AppError)
        self.assertIsNone(error.failure)
        self.assertEqual(where(Failure(ValueError("bare"))), "")
