"""Graceful shutdown: on SIGTERM or SIGINT, ``llmhost serve`` drains, then exits 0.

The order, as a load balancer (Kubernetes among them) expects it:

1. **The first signal starts the drain.** The listener stays open. ``/ready`` answers 503 at once (the
   balancer takes the server out of rotation), ``/health`` stays 200 (liveness: do not kill it), and
   ``/metrics`` keeps answering. Every other new request gets 503 with ``Retry-After`` in its dialect's
   envelope, and every response from then on carries ``Connection: close``, so a client on a keep-alive
   connection opens a new one (through the balancer, to another replica) for its next request.
   Requests already running, streams included, go on.
2. **The drain ends** when the last running request has finished, or after ``drain_seconds``. Then the
   connections still open are closed: at the deadline that cuts the streams still running (the client
   sees the connection drop before the stream's end; the engine frees their slots as for any client
   that went away). uvicorn's own shutdown follows (listener closed, lifespan ended) and the process
   exits 0.
3. **A second signal exits at once** (within uvicorn's 0.1 s tick): the connections are closed, the
   requests still running are cut, the app's own shutdown runs, and the status is 128 + the signal's
   number (130 for a second Ctrl-C).

An event subscription (a ``GET`` answered with ``text/event-stream``, such as MCP's session stream) is
no work in progress: it does not hold the drain open, and it ends with the drain.

:class:`Drain` is the state, :class:`DrainMiddleware` counts and refuses requests, and
:class:`DrainingServer` (a ``uvicorn.Server``) turns signals into the drain and ends it.
"""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmhost.doors.common import ErrorRenderer, renderer_for
from llmhost.errors import ErrorInfo

__all__ = ["ALWAYS_SERVED", "Drain", "DrainMiddleware", "DrainingServer", "shutting_down"]

log = logging.getLogger(__name__)

# Answered as usual during the drain: liveness, metrics, and /ready (whose route answers 503 itself).
ALWAYS_SERVED = frozenset({"/health", "/ready", "/metrics"})
RETRY_AFTER_SECONDS = 1  # a balancer has another replica ready; a lone server is back after a restart
# What uvicorn may still spend after the drain, for requests the closed connections have not yet ended.
_SHUTDOWN_GRACE_SECONDS = 5


def shutting_down() -> ErrorInfo:
    """The refusal of a request that arrives during the drain (``/ready`` answers it too)."""
    message = "the server is shutting down; retry the request (elsewhere, behind a load balancer)"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return ErrorInfo(503, "overloaded", message, None, "shutting_down", headers)


class Drain:
    """The drain's state, shared by :class:`DrainMiddleware` (which counts the requests in flight and
    refuses new ones) and :class:`DrainingServer` (which begins the drain and ends it). Only the event
    loop's thread touches it: the signal handler runs there too."""

    def __init__(self, seconds: float) -> None:
        if not seconds >= 0:  # NaN too
            raise ValueError(f"drain seconds must be 0 or more, not {seconds}")
        self.seconds = seconds
        self.in_flight = 0  # requests running, event subscriptions not counted
        self._deadline: float | None = None

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    @property
    def remaining(self) -> float:
        """Seconds left until the drain's deadline (0 once it has passed; the whole time before it began)."""
        if self._deadline is None:
            return self.seconds
        return max(0.0, self._deadline - time.monotonic())

    @property
    def done(self) -> bool:
        """Draining, and either nothing runs any more or the time is up."""
        return self.draining and (self.in_flight == 0 or self.remaining == 0.0)

    def begin(self) -> None:
        """Start the drain (again: no change; the deadline stays the first one)."""
        if self._deadline is None:
            self._deadline = time.monotonic() + self.seconds


class DrainMiddleware:
    """Counts the requests in flight; during the drain refuses new ones (503 + ``Retry-After``, in the
    envelope of the dialect the path belongs to) and sends ``Connection: close`` on every response that
    starts during it."""

    def __init__(self, app: ASGIApp, *, drain: Drain, renderers: dict[str, ErrorRenderer]) -> None:
        self.app = app
        self.drain = drain
        self.renderers = renderers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain = self.drain
        if drain.draining and scope["path"] not in ALWAYS_SERVED:
            response = renderer_for(self.renderers, scope["path"], scope.get("headers") or ())(
                shutting_down()
            )
            await response(scope, receive, _closing(send))
            return
        counted = True
        may_subscribe = scope["method"] == "GET"

        async def tracking_send(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":
                if may_subscribe and counted and _is_event_stream(message):
                    counted = False  # a subscription, not work: it must not hold the drain open
                    drain.in_flight -= 1
                if drain.draining:
                    message = _with_connection_close(message)
            await send(message)

        drain.in_flight += 1
        try:
            await self.app(scope, receive, tracking_send)
        finally:
            if counted:
                drain.in_flight -= 1


def _closing(send: Send) -> Send:
    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = _with_connection_close(message)
        await send(message)

    return closing_send


def _is_event_stream(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.lower().startswith(b"text/event-stream")
        for name, value in start.get("headers", ())
    )


def _with_connection_close(start: Message) -> Message:
    headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"connection"]
    return {**start, "headers": [*headers, (b"connection", b"close")]}


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain in front of its own shutdown.

    uvicorn on its own closes the listener on the first signal (a request that reaches the server while
    the balancer still routes to it is refused at the TCP level, with no ``Retry-After``), and after
    shutting down raises the signal again, so SIGTERM ends the process with that signal rather than 0.
    Here the first signal begins the drain; :meth:`on_tick` (uvicorn calls it every 0.1 s) ends it.
    """

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        # Bounds only what comes after the drain: what is still running then has had its connection closed.
        config.timeout_graceful_shutdown = _SHUTDOWN_GRACE_SECONDS
        super().__init__(config)
        self.drain = drain
        self.forced_by: int | None = None  # the second signal, which ended the drain early
        self._drain_logged = False
        self._shutting_down = False  # the drain is over: uvicorn's own shutdown runs

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler (it may interrupt the event loop anywhere): it sets state; on_tick does the work.
        # Not uvicorn's own, which would raise the signal again once the server has shut down.
        if not self.drain.draining:
            self.drain.begin()
            return
        self.forced_by = sig
        self.should_exit = True
        # Not uvicorn's force_exit, which skips the app's own shutdown (its lifespan is cancelled, with a
        # traceback), unless that shutdown is what is running now.
        self.config.timeout_graceful_shutdown = 0  # cancel at once what the closed connections leave
        if self._shutting_down:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            if self.forced_by is not None:
                log.warning("second signal: exiting now, cutting %d request(s)", self.drain.in_flight)
                self._close_connections()
            self._shutting_down = True
            return True
        drain = self.drain
        if not drain.draining:
            return False
        if not self._drain_logged:
            self._drain_logged = True
            log.info(
                "shutting down: draining %d request(s) for up to %g s (a second signal exits at once)",
                drain.in_flight,
                drain.seconds,
            )
        if not drain.done:
            return False
        if drain.in_flight:
            log.warning(
                "drain time (%g s) is over: cutting %d request(s) still running",
                drain.seconds,
                drain.in_flight,
            )
        else:
            log.info("drained: no request running")
        self._close_connections()
        self._shutting_down = True
        return True

    def _close_connections(self) -> None:
        """Close every open connection: idle ones, event subscriptions and, at the deadline, the streams
        still running. Each running request's app sees ``http.disconnect`` and ends as for a client that
        went away (its engine slot freed), and uvicorn logs no error for it."""
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
