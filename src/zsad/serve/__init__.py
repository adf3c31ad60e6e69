"""``zsad serve``: an HTTP inspection service and a web page over ``zsad.runs`` (needs ``zsad[serve]``).

``Service`` holds the work (model pool, dynamic batching, result store); ``create_app`` puts HTTP in front of it;
``serve`` runs it with uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zsad.serve.service import ServeConfig, Service


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> Service:
    """Check the settings, bind, and serve until Ctrl-C / SIGTERM (queued requests finish first).

    Returns the stopped service (its ``stats()`` say what was done); a Ctrl-C is the normal way to stop and is
    not raised.
    """
    import uvicorn

    from zsad.serve.app import create_app
    from zsad.serve.service import Service

    service = Service(config)
    try:
        app = create_app(service)
    except BaseException:
        service.close()
        raise
    server: Any = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after a clean shutdown
        pass
    finally:
        service.close()  # idempotent: the app's shutdown has closed it unless startup failed
    return service
