# -*- test-case-name: tests.test_tap -*-
"""
The command line of a node, shared by C{twistd relay} and C{relay node}:
L{Options} parses and validates it, L{makeService} builds the node. This is
the only module that fetches the global reactor.

Every start-up error ends the process with one line on standard error
(C{relay: error: ...}) and exit status 1; C{twistd} additionally prints its
usage text on standard output for option errors, as it always does.
"""

from __future__ import annotations

import gc
import os
import resource
import signal
import stat
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.logger import (
    Logger,
    LoggingFile,
    LogLevel,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure

from relaytx import _early
from relaytx._apps import AppError, import_app, run_setup
from relaytx._logs import bridge_standard_logging
from relaytx.config import NodeConfig, build_config
from relaytx.errors import StartupError, failure_exception
from relaytx.node import RelayNode


def error_line(message: str, stream: IO[str] | None = None) -> None:
    """
    Write C{relay: error: MESSAGE} to the process's real standard error
    (C{twistd} redirects C{sys.stderr} into its log once logging starts).
    """
    stream = stream or sys.__stderr__ or sys.stderr
    # One line, even when an exception's message spans several.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    stream.write(f"relay: error: {line}\n")
    stream.flush()


def tune_collector() -> None:
    """
    Tune the cyclic garbage collector for a long-lived process that hosts
    nodes: what start-up made (modules, apps) is frozen out of every
    collection, and young collections run every 50k allocations, not 700.
    With thousands of links a full pass took hundreds of ms; a node's
    routing tables are mostly dicts and tuples the collector need not walk
    that often. Called once start-up is done.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def fail(message: str) -> NoReturn:
    """Print the error line and exit with status 1."""
    error_line(message)
    Twistd.failed(message)
    raise SystemExit(1)


#: The descriptors looked through for the other end of a daemon's status
#: pipe where /proc is not there, at most (L{_close_other_end}).
_MOST_FDS = 65536

#: The most a daemon tells its parent (L{_wait_for_start} reads it in one go).
_STATUS_SIZE = 4000


def _wait_for_start(runner: Any, pipe: int) -> int:
    """
    What a daemon's parent does in place of twistd's own wait for the word
    from its child: on an error, the child's one clear line
    (C{relay: error: ...}, as C{relay node} and C{twistd -n} print it),
    not twistd's two lines with the reason's bytes cut at 100.

    :returns: the parent's exit status.
    """
    from twisted.python.util import untilConcludes

    _early.release()  # (the parent runs no node: a stop signal ends its wait)
    _close_other_end(pipe)
    data = untilConcludes(os.read, pipe, _STATUS_SIZE)
    if data == b"0":
        return 0
    why = data[2:] if data[:2] == b"1 " else data
    error_line(why.decode("utf-8", "backslashreplace") or "the daemon ended before it served")
    return 1


def _close_other_end(pipe: int) -> None:
    """
    Close this process's copy of the write end of C{pipe}. twistd's
    parent keeps it open as it waits, so a daemon that died before it
    said a word (no C{/dev/null} in its C{--chroot}, say, or a module it
    could no longer import there) left the parent waiting for ever: with
    no writer left, the read ends (C{b""}, "ended before it served").
    twistd does not say which descriptor it is; it is the other one of
    the same pipe.
    """
    try:
        mine = os.fstat(pipe)
    except OSError:
        return
    try:
        fds: Iterable[int] = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # (no /proc: in a --chroot, the parent is inside it too)
        fds = range(min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], _MOST_FDS))
    for fd in fds:
        if fd == pipe:
            continue
        try:
            other = os.fstat(fd)
        except OSError:
            continue  # (the listing's own descriptor, closed by now)
        if stat.S_ISFIFO(other.st_mode) and (other.st_dev, other.st_ino) == (
            mine.st_dev,
            mine.st_ino,
        ):
            os.close(fd)


class Twistd:
    """
    What a node that twistd started owes twistd, which cannot hear of a
    fatal start-up error otherwise: the process ends by C{SystemExit} or
    C{os._exit}, past twistd's own clean-up.

      - A daemon's parent waits on a status pipe for the word that start-up
        went well (C{b"0"}) or failed (C{b"1 "} and why), and prints the
        latter. twistd says C{0} as soon as the services started, before
        the apps are set up, and nothing at all on C{SystemExit}: the parent
        of a daemon whose port was in use waited for ever. The node takes
        the pipe and says it itself, once it serves, or once it failed.
      - The pid file goes.

    @cvar options: twistd's own options, under twistd.
    """

    options: Any = None
    _pipe: int | None = None

    @classmethod
    def daemonizing(cls, reactor: Any) -> None:
        """
        A daemon's parent waits for the word with L{_wait_for_start}; the
        daemon says it fails if it stops before it serves (a signal during
        its apps' setup), or the parent would wait for ever.
        """
        options = cls.options
        if options is None or options.get("nodaemon"):
            return
        from twisted.scripts import _twistd_unix

        runner = getattr(_twistd_unix, "UnixApplicationRunner", None)
        if runner is not None and hasattr(runner, "_waitForStart"):
            runner._waitForStart = _wait_for_start
        reactor.addSystemEventTrigger("before", "shutdown", cls._stopping)

    @classmethod
    def _stopping(cls) -> None:
        if cls._pipe is not None or (cls.options or {}).get("statusPipe") is not None:
            # (twistd removes the pid file itself as it stops.)
            cls.failed("stopped before it served (a signal during its apps' setup)", pid=False)

    @classmethod
    def take_pipe(cls) -> None:
        """Take a daemon's status pipe from twistd, to say the word when it is known."""
        options = cls.options
        if options is not None and not options.get("nodaemon") and cls._pipe is None:
            cls._pipe, options["statusPipe"] = options.get("statusPipe"), None

    @classmethod
    def tell(cls, word: bytes) -> None:
        """Say C{word} to a daemon's parent, if it still waits."""
        cls.take_pipe()
        pipe, cls._pipe = cls._pipe, None
        if pipe is None:
            return
        with suppress(OSError):
            # (One write under PIPE_BUF: the parent's one read gets it all.)
            os.write(pipe, word[:_STATUS_SIZE])
            os.close(pipe)

    @classmethod
    def failed(cls, message: str, pid: bool = True) -> None:
        """Start-up failed: tell a daemon's parent why, and remove the pid file (C{pid})."""
        if cls.options is None:
            return
        if cls._pipe is not None or cls.options.get("statusPipe") is not None:
            # A daemon, whose standard error goes nowhere: its log says it
            # too. (Before the fork the error line is all: the log has not
            # begun, and would write the line again to the same terminal.)
            Logger().critical("relay: error: {message}", message=message)
        cls.tell(b"1 " + message.encode("utf-8", "backslashreplace"))
        name = cls.options.get("pidfile")
        if name and pid:
            with suppress(OSError):
                with open(name, "rb") as f:
                    mine = f.read().strip() == b"%d" % os.getpid()
                if mine:
                    os.remove(name)


class Options(usage.Options):
    """
    Options of a relaytx node (SPEC section 3).
    """

    synopsis = "[options]"
    longdesc = (
        "Run a relaytx node: actor servers callable over JSON-RPC 2.0 (POST /rpc) "
        "and across a WebSocket mesh of nodes (/ws/p2p), all on one port."
    )
    optFlags = [
        ["disable-registry", None, "Do not exchange server registries with peers."],
    ]
    optParameters = [
        ["node-id", None, None, "This node's id: 1-64 of A-Za-z0-9._- (default: random)."],
        ["port", "p", None, "TCP port number or Twisted endpoint string (default: 8080)."],
        ["interface", None, None, "Address to bind when --port is a number (default: 127.0.0.1)."],
        ["secret-file", None, None, "Shared cluster secret that peers must prove."],
        ["config", "c", None, "TOML file with any of these options, limits and rules."],
        ["ping-interval", None, None, "Seconds between liveness pings (default: 5)."],
        ["log-format", None, None, "Log lines as text (default) or json."],
    ]

    #: Where option errors are reported; C{None} is the process's stderr.
    stderr: IO[str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self["add-peer"] = []
        self["app"] = []
        self.config: NodeConfig | None = None

    def opt_add_peer(self, url: str) -> None:
        """Dial this peer, re-dialling it; ID@URL links only if it proves it is ID. Repeatable."""
        self["add-peer"].append(url)

    def opt_app(self, spec: str) -> None:
        """Load an app: a module name or a .py file defining setup(node). Repeatable."""
        self["app"].append(spec)

    def opt_version(self) -> NoReturn:
        """Print relaytx's version and exit."""
        from relaytx import __version__
        from twisted import __version__ as twisted_version

        sys.stdout.write(f"relaytx {__version__} (Twisted {twisted_version})\n")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            error_line(str(e), self.stderr)
            if self.parent is not None:
                # Under twistd: the line said it all. (twistd would print
                # its whole usage on stdout after it.)
                raise SystemExit(1) from None
            raise

    def postOptions(self) -> None:
        ping = self["ping-interval"]
        try:
            ping_interval = None if ping is None else float(ping)
        except ValueError:
            raise usage.UsageError(f"--ping-interval {ping!r}: give a number of seconds") from None
        self.config = build_config(
            {
                "config": self["config"],
                "node_id": self["node-id"],
                "port": self["port"],
                "interface": self["interface"],
                "add_peer": self["add-peer"],
                "app": self["app"],
                "disable_registry": bool(self["disable-registry"]),
                "secret_file": self["secret-file"],
                "ping_interval": ping_interval,
                "log_format": self["log-format"],
            }
        )
        from relaytx._dialer import peer_url, split_peer

        named: dict[str, tuple[str, str | None]] = {}
        for address in self.config.add_peer:
            node_id, bare = split_peer(address)
            try:
                url = peer_url(bare, self.config.node_id)[0]
            except ValueError as e:
                raise usage.UsageError(f"--add-peer: {e}") from None
            # One peer given twice, in any spelling, is dialled once; but
            # not when the two name different ids for it.
            earlier = named.setdefault(url, (address, node_id))
            if earlier[1] != node_id:
                raise usage.UsageError(
                    f"--add-peer: {earlier[0]} and {address} are one peer with two ids"
                )
        if self.config.secret_file is not None and not os.path.isfile(self.config.secret_file):
            raise usage.UsageError(f"--secret-file {self.config.secret_file}: no such file")
        self._no_default_pidfile()
        parent = getattr(self, "parent", None)
        if parent is not None:
            _check_twistd_places(parent)

    def _no_default_pidfile(self) -> None:
        # twistd writes ./twistd.pid by default and then refuses to start a
        # second node from the same directory. In the foreground a pid file
        # serves nothing, so unless one was asked for, do without.
        parent = getattr(self, "parent", None)
        if (
            parent is not None
            and parent.get("nodaemon")
            and parent.get("pidfile") == "twistd.pid"
            and not _pidfile_given(sys.argv[1:])
        ):
            parent["pidfile"] = ""


def _check_twistd_places(options: Any) -> None:
    """
    Check the places twistd's own options name (C{--chroot}, C{--rundir},
    C{--pidfile}) while options are still parsed. twistd itself finds a
    missing one only as it sets the process up, and ends with a traceback
    in its log (on stdout in the foreground) and nothing on stderr.

    :raises usage.UsageError: for a place that cannot serve.
    """
    chroot = options.get("chroot")
    if chroot:
        if not os.path.isdir(chroot):
            raise usage.UsageError(f"--chroot {chroot}: no such directory")
        if not options.get("nodaemon") and not os.path.exists(os.path.join(chroot, "dev/null")):
            # (A daemon opens it once inside, or dies before it can say so.)
            raise usage.UsageError(f"--chroot {chroot}: a daemon needs dev/null in it")
        return  # (the other places are inside it)
    rundir = options.get("rundir") or "."
    if not os.path.isdir(rundir):
        raise usage.UsageError(f"--rundir {rundir}: no such directory")
    pidfile = options.get("pidfile")
    if pidfile:
        if os.path.isdir(pidfile):
            raise usage.UsageError(f"--pidfile {pidfile}: is a directory")
        folder = os.path.dirname(os.path.abspath(pidfile))
        if not os.path.isdir(folder):
            raise usage.UsageError(f"--pidfile {pidfile}: no such directory {folder}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--pidfile {pidfile}: {folder} is not writable")
        _check_pidfile(pidfile)


def _check_pidfile(pidfile: str) -> None:
    """
    What twistd checks of a pid file that exists (with its own lines of
    text): that it holds a pid, and that no process of that pid runs.

    :raises usage.UsageError: if the pid file is in use, or holds no pid.
    """
    try:
        with open(pidfile, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        return
    except OSError as e:
        raise usage.UsageError(f"--pidfile {pidfile}: {e.strerror or e}") from None
    try:
        pid = int(content)
    except ValueError:
        raise usage.UsageError(f"--pidfile {pidfile}: holds no pid") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return  # (stale: twistd removes it)
    except OSError:
        pass  # (it runs, under another user)
    raise usage.UsageError(f"--pidfile {pidfile}: another node (pid {pid}) runs with it")


def _twistd_log_file(options: Any) -> IO[str]:
    """
    :returns: where twistd would write its own log, by its options (its
        rule for C{-l}/C{--logfile}: stdout in the foreground unless a file
        is named, else the file, C{twistd.log} by default, rotated as
        twistd rotates it).
    """
    name = options.get("logfile") or ""
    foreground = options.get("nodaemon", False)
    if name == "-" or (foreground and not name):
        if not foreground:
            fail("--logfile -: a daemon cannot log to stdout (add -n, or name a file)")
        return sys.stdout
    from twisted.python.logfile import LogFile

    path = name or "twistd.log"
    try:
        log_file = LogFile.fromFullPath(path)
    except OSError as e:
        fail(f"--logfile {path}: {e.strerror or e}")

    def rotate(signum: int, frame: Any) -> None:
        # As twistd rotates its own log file on SIGUSR1 (which would
        # otherwise end the process).
        from twisted.internet import reactor

        threads: Any = reactor  # (IReactorThreads)
        threads.callFromThread(log_file.rotate)

    signal.signal(signal.SIGUSR1, rotate)
    stream: IO[str] = log_file  # (a file-like object)
    return stream


def _pidfile_given(argv: list[str]) -> bool:
    """
    :returns: whether twistd's command line names a pid file (its default,
        twistd.pid, cannot be told from one named so once parsed).
    """
    return any(arg == "--pidfile" or arg.startswith("--pidfile=") for arg in argv)


class CommandLineNode(RelayNode):
    """
    A node run from the command line: a start-up error ends the process
    with one clear line instead of a traceback.

    :ivar exit_status: what the process should exit with: 0, or 1 after a
        fatal start-up error.
    """

    exit_status = 0
    #: twistd's own options, under twistd (its -l/--logfile, -n)
    twistd_options: Any = None
    #: the fatal errors' lines, held for the caller to print once the
    #: reactor has stopped (L{fatal}); C{None}: printed at once
    held_errors: list[str] | None = None

    def __init__(self, config: NodeConfig, reactor: Any) -> None:
        super().__init__(config, reactor, on_fatal=self.fatal)

    def setServiceParent(self, parent: Any) -> Any:
        # Under twistd the parent is the application, whose ILogObserver
        # component twistd logs to (set before twistd starts logging): the
        # node's format, and its level (info, as relay node logs; twistd's
        # own observer wrote debug events too, which a stranger's bad
        # frames make by the hundred). Where twistd logs to syslog, it does.
        twistd = self.twistd_options or {}
        if hasattr(parent, "setComponent") and not twistd.get("syslog"):
            from twisted.logger import ILogObserver

            from relaytx._logs import json_observer, text_observer

            stream = _twistd_log_file(twistd)
            if self.config.log_format == "json":
                observer = json_observer(stream, self.node_id)
            else:
                observer = text_observer(stream)
            parent.setComponent(ILogObserver, observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        self.log_started = True  # (twistd's log has begun by now)
        Twistd.take_pipe()
        stop_signals_before_running(self.reactor)
        try:
            super().privilegedStartService()
        except StartupError as e:
            fail(str(e))
        except Exception as e:
            # (Unforeseen: a daemon would die of it without a word to its
            # parent; in a --chroot without Python's own modules, say.)
            self._log.failure("could not start")
            fail(f"could not start: {type(e).__name__}: {e}")

    def _warn(self, port: Any) -> list[str]:
        warnings = super()._warn(port)
        Twistd.tell(b"0")  # it serves, its apps set up: a daemon's parent may go
        return warnings

    def startService(self) -> None:
        super().startService()
        tune_collector()

    def fatal(self, message: str) -> None:
        """
        Report C{message}, stop the reactor and exit with status 1. Where
        the log goes to the same stream as the error line (C{relay node}),
        the line is held (L{held_errors}) and printed after the shutdown's
        own lines, so that it is the last.
        """
        if self.held_errors is not None:
            self.held_errors.append(message)
        else:
            error_line(message)
        Twistd.failed(message)
        self.exit_status = 1
        if not self.reactor.running:
            self.reactor.callWhenRunning(self.reactor.stop)
            return
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # a second fatal error while shutting down
            pass

    def load_app_or_exit(self, spec: str) -> None:
        """
        Load the app C{spec}: exit at once (status 1) if it cannot be
        imported or its C{setup} raises, and call L{fatal} if a Deferred
        returned by its C{setup} fails later. Either way the error line
        names where it failed, and the traceback goes to the log.
        """
        # Not RelayNode.load_app: the errback it adds to the setup Deferred
        # to spot a synchronous failure also swallows a later one.
        try:
            module = import_app(spec)
        except StartupError as e:
            self._app_failed(e)
        d = run_setup(spec, module, self, self.run_coroutine)
        if d.called:  # setup is done already, or raised
            failed: list[Failure] = []
            d.addErrback(failed.append)
            if failed:
                self._app_failed(failure_exception(failed[0]))
            return

        def report(failure: Failure) -> None:
            error = failure_exception(failure)
            self._log_traceback(error)
            self.fatal(str(error))

        done: Deferred[None] = Deferred()  # (fires only if setup succeeds)
        d.addCallbacks(done.callback, report)
        self._setups.append(done)  # the node serves once it fires

    #: whether the log is being written already (C{relay node}); C{twistd}
    #: starts its log only once the service is made
    log_started = True

    def _log_traceback(self, error: BaseException) -> None:
        failure = error.failure if isinstance(error, AppError) else None
        if failure is None or not failure.frames:
            return
        if self.log_started:
            self._log.failure("{message}", failure, message=str(error))
        else:  # the process ends before twistd's log begins: its stderr is the log
            stream = sys.__stderr__ or sys.stderr
            stream.write(failure.getTraceback())
            stream.flush()

    def _app_failed(self, error: BaseException) -> NoReturn:
        if not self.log_started:
            # Under twistd, which had not begun its log: what the apps
            # logged and printed so far is held for it. It goes to stderr,
            # with the traceback and the error line.
            stream = sys.__stderr__ or sys.stderr
            if self.config.log_format == "json":
                from relaytx._logs import json_observer

                observer = json_observer(stream, self.node_id)
                self.log_started = True  # (the traceback too is one JSON line)
            else:
                observer = textFileLogObserver(stream)
            globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
        self._log_traceback(error)
        fail(str(error))


def makeService(options: Options) -> CommandLineNode:
    """
    Build the node described by C{options} and load its apps.

    Apps are imported and their C{setup} called here, before the reactor
    runs, so a broken app stops the start-up at once.
    """
    from twisted.internet import reactor

    assert options.config is not None, "parseOptions() first"
    # Like ``python -m``, find --app modules in the current directory too
    # (last, so an app never shadows an installed module).
    if options.config.app and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        node = CommandLineNode(options.config, reactor)
    except StartupError as e:  # e.g. an unreadable --secret-file
        fail(str(e))
    node.log_started = options.parent is None  # relay node logs from the start
    node.twistd_options = Twistd.options = options.parent
    if options.parent is not None:
        _early.hold()  # (from here under twistd: its own start-up is its own)
    Twistd.daemonizing(reactor)
    bridge_standard_logging()  # an app's logging.warning, asyncio's errors: into the node's log
    with _output_logged(options.parent is not None):
        for spec in options.config.app:
            node.load_app_or_exit(spec)
    stop_on_sigint()
    if options.parent is not None:  # under twistd: its exit status is 0 unless we say
        reactor.addSystemEventTrigger("after", "shutdown", _exit_on_failure, node)
    return node


def stop_once(reactor: object) -> None:
    """
    Have the reactor's SIGTERM, SIGINT and SIGBREAK handlers stop it once:
    a second signal while it stops (timeout(1) sends one to the process and
    one to its group) is ignored, rather than stopping a reactor that is
    stopping (a critical ReactorNotRunning traceback in the log).

    The reactor's own methods are wrapped, on the instance, before it runs:
    the handlers it installs as it starts are those methods, whenever and
    however it installs them (wrapping the installed handlers afterwards
    missed a second signal now and then under twistd).
    """
    core: Any = reactor
    if getattr(core, "_relaytx_stops_once", False):
        return
    core._relaytx_stops_once = True
    stopping: list[bool] = []

    def once(original: Any) -> Any:
        def handler(*args: Any) -> None:
            if not stopping:
                stopping.append(True)
                original(*args)

        return handler

    for name in ("sigInt", "sigTerm", "sigBreak"):
        original = getattr(core, name, None)
        if callable(original):
            setattr(core, name, once(original))


@contextmanager
def _output_logged(under_twistd: bool) -> Iterator[None]:
    """
    Under twistd, what an app's setup prints is a line of the log, as it
    is once twistd logs (which then takes C{sys.stdout} and C{sys.stderr}
    over), not a raw line in it: a JSON log stays one object a line.
    (C{relay node} logs to stderr, and leaves stdout to the apps.)
    """
    if not under_twistd:
        yield
        return
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = LoggingFile(Logger("stdout"), LogLevel.info)
    sys.stderr = LoggingFile(Logger("stderr"), LogLevel.error)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if getattr(stream, "_buffer", ""):  # a last line without its newline
                stream.write("\n")
        sys.stdout, sys.stderr = stdout, stderr


def stop_on_sigint() -> None:
    """
    Let SIGINT stop the node wherever it was started. A shell starts
    background jobs with SIGINT ignored, and Twisted keeps an ignored SIGINT
    ignored (it only takes over Python's default handler): C{relay node &}
    or C{twistd -n relay &} from a script could not be stopped by SIGINT.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def stop_signals_before_running(reactor: Any) -> None:
    """
    Take SIGTERM and SIGINT from now (the node is about to listen; or from
    earlier, L{relaytx._early}) until the reactor runs, and stop the node as
    soon as it does, as later signals do. The reactor puts its own handlers
    in place only as it starts: a signal in between killed the process
    (-15) or raised KeyboardInterrupt wherever start-up was (inside the
    listen call: a false "cannot listen"; under twistd, lost), so a client
    that signalled a node as soon as its port opened saw it die, or keep
    running.

    Only for the global reactor of a process not yet running it, from the
    main thread (a test's reactor is left be).
    """
    import threading

    from twisted.internet import reactor as global_reactor

    if (
        reactor is not global_reactor
        or reactor.running
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    core: Any = reactor  # (the reactor's own signal handlers are not in its interfaces)
    stop_once(core)
    _early.hold()

    def running() -> None:
        # The reactor's SIGTERM handler replaced ours; its SIGINT handler
        # goes only where Python's default one was.
        if _early.holds(signal.getsignal(signal.SIGINT)):
            signal.signal(signal.SIGINT, core.sigInt)
        if _early.holds(signal.getsignal(signal.SIGTERM)):
            signal.signal(signal.SIGTERM, core.sigTerm)
        if _early.heard:
            first = _early.heard[0]
            (core.sigInt if first == signal.SIGINT else core.sigTerm)(first)

    core.callWhenRunning(running)


def _exit_on_failure(node: CommandLineNode) -> None:
    if node.exit_status:
        sys.stdout.flush()
        os._exit(node.exit_status)


class NodeCommandOptions(Options):
    """
    The options of C{relay node}: those of C{twistd relay}, and the reactor
    (which C{twistd} chooses with its own C{-r}).
    """

    # (Options' own parameters are gathered from the base class: listed
    # again here, every one was there twice, and the parser took no
    # beginning of one for it, --node-i or --po, as twistd relay does.)
    optParameters = [
        [
            "reactor",
            "r",
            None,
            "The reactor to run on, as twistd's -r names it: asyncio, epoll, poll, ... "
            "(default: Twisted's default, epoll on Linux).",
        ],
    ]


def run_options(argv: list[str]) -> Options:
    """
    Parse C{argv} as node options.

    :raises SystemExit: with status 2 on bad options (the line is printed).
    """
    options = NodeCommandOptions()
    # Without a twistd parent the synopsis is printed alone: name the command.
    options.synopsis = f"Usage: relay node {Options.synopsis}"
    try:
        options.parseOptions(argv)
    except usage.UsageError:
        raise SystemExit(2) from None
    return options


__all__ = ["CommandLineNode", "Options", "makeService"]
