"""
Tests for L{relaytx.config}: options merged over a TOML file into a
validated L{NodeConfig}.
"""

from __future__ import annotations

import os
import re
from typing import Any

import twisted.test
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from relaytx.config import (
    ConfigError,
    Limits,
    NodeConfig,
    build_config,
    port_description,
    read_toml,
)
from tests.support import TempDirMixin

SERVER_PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")


class ConfigTestCase(TempDirMixin, SynchronousTestCase):
    """Helpers for writing TOML files and checking one-line errors."""

    def toml(self, text: str | bytes) -> str:
        """Write C{text} to a new file and return its path."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
        return path

    def assertConfigError(self, fn: Any, *args: Any, match: str = "") -> ConfigError:
        """C{fn(*args)} raises a one-line L{ConfigError} whose text contains C{match}."""
        e = self.assertRaises(ConfigError, fn, *args)
        text = str(e)
        self.assertNotIn("\n", text)
        self.assertTrue(text)
        self.assertIn(match, text)
        return e


class DefaultsTests(ConfigTestCase):
    """Defaults of L{build_config}."""

    def test_empty(self) -> None:
        """With no options a node gets a random 16-hex-digit id and listens on 127.0.0.1:8080."""
        config = build_config({})
        self.assertIsInstance(config, NodeConfig)
        self.assertRegex(config.node_id, r"\A[0-9a-f]{16}\Z")
        self.assertEqual(config.port, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.add_peer, ())
        self.assertEqual(config.app, ())
        self.assertFalse(config.disable_registry)
        self.assertIsNone(config.secret_file)
        self.assertEqual(config.ping_interval, 5.0)
        self.assertEqual(config.limits, Limits())

    def test_randomIdsDiffer(self) -> None:
        """Two nodes started without --node-id get different ids."""
        self.assertNotEqual(build_config({}).node_id, build_config({}).node_id)

    def test_noneMeansNotGiven(self) -> None:
        """Options given as None, empty lists or False take the defaults."""
        config = build_config(
            {
                "config": None,
                "node_id": None,
                "port": None,
                "interface": None,
                "add_peer": [],
                "app": [],
                "disable_registry": False,
                "secret_file": None,
                "ping_interval": None,
            }
        )
        self.assertEqual(config.port, "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config.app, ())
        self.assertEqual(config.ping_interval, 5.0)

    def test_limitsDefaults(self) -> None:
        """Both size limits default to 1 MiB."""
        self.assertEqual(Limits().max_body_size, 1024 * 1024)
        self.assertEqual(Limits().max_message_size, 1024 * 1024)

    def test_frozen(self) -> None:
        """A NodeConfig cannot be changed after it is built."""
        config = build_config({"node_id": "n1"})
        self.assertRaises(AttributeError, setattr, config, "node_id", "n2")

    def test_configErrorIsUsageError(self) -> None:
        """ConfigError is a UsageError, so twistd reports it as an option error."""
        self.assertTrue(issubclass(ConfigError, UsageError))


class NodeIdTests(ConfigTestCase):
    """Validation of --node-id."""

    def test_valid(self) -> None:
        """Ids of 1-64 characters of A-Za-z0-9._- are accepted as given."""
        for node_id in ["a", "n1", "Node-1.eu_west", "0", "." * 3, "x" * 64, "A-Z.a_z-0.9"]:
            self.assertEqual(build_config({"node_id": node_id}).node_id, node_id)

    def test_invalid(self) -> None:
        """Spaces, punctuation, non-ASCII and over-long ids are refused with one line."""
        for node_id in ["bad id!", "a/b", "a:b", "x" * 65, "é", "a\nb", "a\n", " a", "a*"]:
            e = self.assertConfigError(build_config, {"node_id": node_id}, match="--node-id")
            self.assertIn("A-Za-z0-9._-", str(e))

    def test_empty(self) -> None:
        """An empty --node-id is an error, not a silent random id."""
        self.assertConfigError(build_config, {"node_id": ""}, match="--node-id")

    def test_from_certificate(self) -> None:
        """
        In PKI mode with no --node-id, the id is the one the certificate
        names (its common name); a given id stays as given, and is then
        checked against the certificate when the node starts.
        """
        from tests.support import Authority

        authority = Authority("mesh CA")
        cert, key = authority.issue("n5")
        tls = {
            "ca": self.toml(authority.pem),
            "cert": self.toml(cert),
            "key": self.toml(key),
            "require_client_cert": True,
        }
        self.assertEqual(build_config({"tls": tls}).node_id, "n5")
        self.assertEqual(build_config({"tls": tls, "node_id": "n6"}).node_id, "n6")
        # Not in PKI mode: a random id, as without a certificate.
        plain = {"cert": tls["cert"], "key": tls["key"]}
        self.assertNotEqual(build_config({"tls": plain}).node_id, "n5")


class PortTests(ConfigTestCase):
    """--port and --interface."""

    def test_number(self) -> None:
        """A port number listens on TCP at --interface (default 127.0.0.1)."""
        self.assertEqual(port_description(9000, "127.0.0.1"), "tcp:9000:interface=127.0.0.1")
        self.assertEqual(port_description("9000", "0.0.0.0"), "tcp:9000:interface=0.0.0.0")
        self.assertEqual(port_description(" 9000 ", "10.0.0.1"), "tcp:9000:interface=10.0.0.1")
        self.assertEqual(port_description("0", "127.0.0.1"), "tcp:0:interface=127.0.0.1")
        self.assertEqual(port_description(65535, "127.0.0.1"), "tcp:65535:interface=127.0.0.1")

    def test_ipv6Interface(self) -> None:
        """The colons of an IPv6 interface are escaped for the endpoint parser."""
        self.assertEqual(port_description(8080, "::1"), "tcp:8080:interface=\\:\\:1")

    def test_outOfRange(self) -> None:
        """A port number above 65535 is refused."""
        self.assertConfigError(port_description, "65536", "127.0.0.1", match="0-65535")
        self.assertConfigError(port_description, 99999, "127.0.0.1", match="--port")

    def test_endpointStrings(self) -> None:
        """Twisted endpoint strings pass through untouched, --interface ignored."""
        for text in [
            "tcp:8080:interface=127.0.0.1",
            "tcp:0",
            "tcp6:8080:interface=\\:\\:1",
            f"ssl:8443:privateKey={SERVER_PEM}",
            f"ssl:8443:privateKey={SERVER_PEM}:certKey={SERVER_PEM}:interface=0.0.0.0",
            "unix:/tmp/relay.sock",
        ]:
            self.assertEqual(port_description(text, "10.9.9.9"), text)
            self.assertEqual(port_description(f"  {text} ", "10.9.9.9"), text)

    def test_badEndpoints(self) -> None:
        """An endpoint that cannot be built is an option error, not a traceback at listen time."""
        missing = self.mktemp()
        for text, fragment in [
            ("tcp:abc", "ValueError"),
            ("tcp:", "ValueError"),
            ("tcp", "TypeError"),
            ("tcp:8080:bogus=1", "bogus"),
            (f"ssl:8443:privateKey={missing}", f"No such file or directory: {missing}"),
            ("systemd:domain=INET:index=99", "not a valid endpoint"),
        ]:
            self.assertConfigError(port_description, text, "127.0.0.1", match=fragment)

    def test_emptyInterface(self) -> None:
        """An empty --interface is refused rather than binding every address."""
        for interface in ["", "  "]:
            self.assertConfigError(port_description, "8080", interface, match="--interface")

    def test_garbage(self) -> None:
        """Anything that is neither a number nor an endpoint is one clear error."""
        for text in [
            "",
            "foo",
            "-1",
            "80.5",
            "http://x:80",
            "\uff18\uff10\uff18\uff10",
            "foo:8080",
        ]:
            self.assertConfigError(port_description, text, "127.0.0.1", match="--port")

    def test_buildConfig(self) -> None:
        """build_config combines --port and --interface into the endpoint."""
        config = build_config({"port": "9001", "interface": "0.0.0.0"})
        self.assertEqual(config.port, "tcp:9001:interface=0.0.0.0")
        config = build_config({"interface": "127.0.0.2"})
        self.assertEqual(config.port, "tcp:8080:interface=127.0.0.2")
        config = build_config({"port": "tcp:9002", "interface": "0.0.0.0"})
        self.assertEqual(config.port, "tcp:9002")

    def test_buildConfigBadPort(self) -> None:
        """A bad --port given to build_config is a ConfigError."""
        self.assertConfigError(build_config, {"port": "nope"}, match="--port")


class OtherOptionTests(ConfigTestCase):
    """--app, --add-peer, --disable-registry, --secret-file, --ping-interval."""

    def test_lists(self) -> None:
        """Repeatable options keep their order, as tuples."""
        config = build_config({"app": ["a.py", "b"], "add_peer": ["ws://h:1", "http://h:2"]})
        self.assertEqual(config.app, ("a.py", "b"))
        self.assertEqual(config.add_peer, ("ws://h:1", "http://h:2"))

    def test_flags(self) -> None:
        """--disable-registry and --secret-file are carried over."""
        config = build_config({"disable_registry": True, "secret_file": "s.txt"})
        self.assertTrue(config.disable_registry)
        self.assertEqual(config.secret_file, "s.txt")

    def test_pingInterval(self) -> None:
        """A ping interval is seconds in (0, 3600]."""
        self.assertEqual(build_config({"ping_interval": 0.5}).ping_interval, 0.5)
        self.assertEqual(build_config({"ping_interval": 3600}).ping_interval, 3600.0)
        for bad in [0, -1, 3600.5, float("nan"), float("inf")]:
            self.assertConfigError(build_config, {"ping_interval": bad}, match="--ping-interval")

    def test_allowedOrigins(self) -> None:
        """
        Allowed origins are kept as a browser sends them in C{Origin}: the
        scheme and host in lower case, a default port and a bare slash left out.
        """
        config = build_config(
            {
                "allowed_origins": [
                    "http://Good.Test:21030",
                    "http://localhost:3000/",
                    "https://127.0.0.1:443",
                    "HTTP://[::1]:80",
                    "https://app.example:8443",
                ]
            }
        )
        self.assertEqual(
            config.allowed_origins,
            {
                "http://good.test:21030",
                "http://localhost:3000",
                "https://127.0.0.1",
                "http://[::1]",
                "https://app.example:8443",
            },
        )
        self.assertEqual(build_config({}).allowed_origins, frozenset())

    def test_notOrigins(self) -> None:
        """What is not an origin is an error that says so, not a rule that never matches."""
        for bad in [
            "*",
            "not a url",
            "good.test",
            "http://",
            "http://*.good.test",
            "http://good.test/app",
            "http://good.test?x=1",
            "http://user@good.test",
            "http://good.test:99999",
        ]:
            self.assertConfigError(
                build_config, {"allowed_origins": [bad]}, match="is not an origin"
            )
        e = self.assertConfigError(build_config, {"allowed_origins": ["null"]})
        self.assertIn("sandboxed", str(e))
        self.assertConfigError(build_config, {"allowed_origins": [1]}, match="list of strings")


class TomlTests(ConfigTestCase):
    """The --config file."""

    def test_allKeys(self) -> None:
        """Every documented key of the file is read into the config."""
        path = self.toml(
            """
            node_id = "file-node"
            port = 9100
            interface = "0.0.0.0"
            add_peer = ["ws://127.0.0.1:8081"]
            app = ["examples/counter.py"]
            disable_registry = true
            secret_file = "secret.txt"
            ping_interval = 2

            [limits]
            max_body_size = 2048
            max_message_size = 4096
            """
        )
        config = build_config({"config": path})
        here = os.path.dirname(os.path.abspath(path))  # relative paths are the file's
        self.assertEqual(
            config,
            NodeConfig(
                node_id="file-node",
                port="tcp:9100:interface=0.0.0.0",
                add_peer=("ws://127.0.0.1:8081",),
                app=(os.path.join(here, "examples/counter.py"),),
                disable_registry=True,
                secret_file=os.path.join(here, "secret.txt"),
                ping_interval=2.0,
                limits=Limits(max_body_size=2048, max_message_size=4096),
            ),
        )

    def test_readToml(self) -> None:
        """read_toml returns the checked table, limits as a nested dict."""
        path = self.toml('node_id = "a"\nport = "tcp:1"\n[limits]\nmax_body_size = 10\n')
        self.assertEqual(
            read_toml(path), {"node_id": "a", "port": "tcp:1", "limits": {"max_body_size": 10}}
        )

    def test_emptyFile(self) -> None:
        """An empty file changes nothing."""
        self.assertEqual(read_toml(self.toml("")), {})
        config = build_config({"config": self.toml(""), "node_id": "n1"})
        self.assertEqual(config, NodeConfig(node_id="n1"))

    def test_partialLimits(self) -> None:
        """A [limits] table may set one limit; the other keeps its default."""
        config = build_config({"config": self.toml("[limits]\nmax_body_size = 100\n")})
        self.assertEqual(config.limits, Limits(max_body_size=100))

    def test_commandLineWins(self) -> None:
        """A value given on the command line overrides the file's."""
        path = self.toml(
            'node_id = "file"\nport = 9100\ninterface = "0.0.0.0"\napp = ["file.py"]\n'
            "ping_interval = 2.0\n"
        )
        config = build_config(
            {
                "config": path,
                "node_id": "cli",
                "port": "9200",
                "interface": None,
                "app": ["cli.py"],
                "ping_interval": 3.0,
            }
        )
        self.assertEqual(config.node_id, "cli")
        self.assertEqual(config.port, "tcp:9200:interface=0.0.0.0")
        self.assertEqual(config.app, ("cli.py",))
        self.assertEqual(config.ping_interval, 3.0)

    def test_fileFillsGaps(self) -> None:
        """Options not given on the command line come from the file."""
        path = self.toml('node_id = "file"\ndisable_registry = true\nport = "tcp:9300"\n')
        config = build_config(
            {"config": path, "node_id": None, "disable_registry": False, "app": []}
        )
        self.assertEqual(config.node_id, "file")
        self.assertTrue(config.disable_registry)
        self.assertEqual(config.port, "tcp:9300")

    def test_fileValuesValidated(self) -> None:
        """Values from the file are validated like command-line values."""
        self.assertConfigError(
            build_config, {"config": self.toml('node_id = "bad id"\n')}, match="--node-id"
        )
        self.assertConfigError(
            build_config, {"config": self.toml("port = 70000\n")}, match="--port"
        )
        self.assertConfigError(
            build_config, {"config": self.toml('node_id = ""\n')}, match="--node-id"
        )
        self.assertConfigError(
            build_config, {"config": self.toml("ping_interval = 0\n")}, match="--ping-interval"
        )

    def test_unknownKey(self) -> None:
        """An unknown setting is named in a one-line error."""
        path = self.toml('nodeid = "x"\n')
        e = self.assertConfigError(read_toml, path, match="unknown setting 'nodeid'")
        self.assertIn(path, str(e))
        self.assertConfigError(build_config, {"config": path}, match="nodeid")

    def test_unknownLimit(self) -> None:
        """An unknown key under [limits] is named with its table."""
        path = self.toml("[limits]\nmax_calls = 3\n")
        self.assertConfigError(read_toml, path, match="unknown setting limits.'max_calls'")

    def test_nestedConfig(self) -> None:
        """A file cannot name another config file."""
        self.assertConfigError(read_toml, self.toml('config = "x.toml"\n'), match="'config'")

    def test_unknownTable(self) -> None:
        """An unknown table is refused too."""
        self.assertConfigError(read_toml, self.toml("[rules]\nx = 1\n"), match="'rules'")

    def test_wrongTypes(self) -> None:
        """A value of the wrong type is a one-line error naming the key."""
        for text, key in [
            ("node_id = 5", "node_id"),
            ("port = 8080.0", "port"),
            ("port = true", "port"),
            ("port = [8080]", "port"),
            ('interface = ["a"]', "interface"),
            ('add_peer = "ws://h:1"', "add_peer"),
            ('app = "a.py"', "app"),
            ('disable_registry = "yes"', "disable_registry"),
            ("disable_registry = 1", "disable_registry"),
            ("secret_file = 1", "secret_file"),
            ('ping_interval = "5"', "ping_interval"),
            ("ping_interval = true", "ping_interval"),
            ("[limits]\nmax_body_size = 1.5", "limits.max_body_size"),
            ("[limits]\nmax_body_size = true", "limits.max_body_size"),
            ('[limits]\nmax_message_size = "1"', "limits.max_message_size"),
        ]:
            self.assertConfigError(read_toml, self.toml(text + "\n"), match=key)

    def test_listItemTypes(self) -> None:
        """The items of add_peer and app must be strings."""
        self.assertConfigError(read_toml, self.toml("app = [1]\n"), match="app")
        self.assertConfigError(
            read_toml, self.toml('add_peer = ["ws://h:1", 2]\n'), match="add_peer"
        )

    def test_limitsNotATable(self) -> None:
        """limits must be a table."""
        self.assertConfigError(read_toml, self.toml("limits = 5\n"), match="[limits]")

    def test_nonPositiveLimits(self) -> None:
        """A limit of zero or less bytes is refused."""
        for key in ["max_body_size", "max_message_size"]:
            for value in [0, -1]:
                path = self.toml(f"[limits]\n{key} = {value}\n")
                self.assertConfigError(build_config, {"config": path}, match=f"limits.{key}")

    def test_missingFile(self) -> None:
        """A missing file is reported with its path and the OS's reason."""
        path = self.mktemp()
        e = self.assertConfigError(read_toml, path, match="--config")
        self.assertIn(path, str(e))
        self.assertIn("No such file", str(e))
        self.assertConfigError(build_config, {"config": path}, match="No such file")

    def test_directory(self) -> None:
        """A directory given as the file is one clear error."""
        self.assertConfigError(read_toml, ".", match="--config .")

    def test_invalidToml(self) -> None:
        """Invalid TOML is reported on one line."""
        self.assertConfigError(read_toml, self.toml("node_id = \n"), match="not valid TOML")
        self.assertConfigError(read_toml, self.toml("[limits\n"), match="not valid TOML")

    def test_notUtf8(self) -> None:
        """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
        self.assertConfigError(read_toml, self.toml(b'node_id = "\xff"\n'), match="not valid TOML")

    def test_messagesAreOneLine(self) -> None:
        """Every error message is a single line naming --config and the path."""
        for text in ['x = "\n', "a = 1\na = 2\n", "[limits]\nnope = 1\n"]:
            path = self.toml(text)
            e = self.assertConfigError(read_toml, path)
            self.assertTrue(re.match(rf"--config {re.escape(path)}: ", str(e)), str(e))


class RelativePathTests(ConfigTestCase):
    """Paths in a config file are relative to the file, not to the working directory."""

    def test_resolvedAgainstTheFile(self) -> None:
        """Apps given as files, secret_file and the [tls] files are taken from the file's place."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "keys"))
        with open(os.path.join(directory, "keys", "node.pem"), "w") as f, open(SERVER_PEM) as pem:
            f.write(pem.read())
        path = os.path.join(directory, "node.toml")
        with open(path, "w") as f:
            f.write(
                'app = ["apps/counter.py", "sub/app", "some.module", "/abs/app.py"]\n'
                'secret_file = "keys/secret"\n'
                '[tls]\ncert = "keys/node.pem"\n'
            )
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        self.patch(os, "getcwd", lambda: elsewhere)  # nothing may depend on it
        config = build_config({"config": path})
        self.assertEqual(
            config.app,
            (
                os.path.join(directory, "apps/counter.py"),
                os.path.join(directory, "sub/app"),
                "some.module",
                "/abs/app.py",
            ),
        )
        self.assertEqual(config.secret_file, os.path.join(directory, "keys/secret"))
        assert config.tls is not None
        self.assertEqual(config.tls.cert, os.path.join(directory, "keys/node.pem"))

    def test_tracingPath(self) -> None:
        """The jsonl exporter's file is taken from the config file's place too."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "node.toml")
        with open(path, "w") as f:
            f.write('[tracing]\nexporter = "jsonl"\npath = "spans/n1.jsonl"\n')
        config = build_config({"config": path})
        assert config.tracing is not None
        self.assertEqual(config.tracing.path, os.path.join(directory, "spans/n1.jsonl"))

    def test_commandLineFromWorkingDirectory(self) -> None:
        """Paths given on the command line stay relative to the working directory."""
        path = self.toml('app = ["from_file.py"]\n')
        config = build_config({"config": path, "app": ["cli.py"], "secret_file": "s.txt"})
        self.assertEqual((config.app, config.secret_file), (("cli.py",), "s.txt"))

    def test_relativeConfigPath(self) -> None:
        """A config file named by a relative path anchors its paths at its own directory."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "n.toml"), "w") as f:
            f.write('app = ["a.py"]\n')
        cwd = os.getcwd()
        os.chdir(os.path.dirname(directory))
        self.addCleanup(os.chdir, cwd)
        config = build_config({"config": os.path.join(os.path.basename(directory), "n.toml")})
        self.assertEqual(config.app, (os.path.join(directory, "a.py"),))
