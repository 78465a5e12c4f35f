"""The gRPC door: the diagnose service (``diagnose.proto``) on ``[grpc] port``, when ``[grpc] enabled``.

It runs for the HTTP app's lifetime (``app.state.lifespans``), on the same host as the HTTP server.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from llmhost.doors.grpc.server import GrpcServer
from llmhost.service import Service

__all__ = ["attach"]


def attach(app: FastAPI, service: Service) -> None:
    settings = service.settings
    if not settings.grpc.enabled:
        return

    @contextlib.asynccontextmanager
    async def run() -> AsyncIterator[None]:
        # Made here, in the server's event loop: a grpc.aio server belongs to the loop that made it.
        server = GrpcServer(service, settings.host, settings.grpc.port)
        app.state.grpc_port = server.port
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app.state.lifespans.append(run)
