"""The HTTP service (issue 10, seed 002): FastAPI on uvicorn over one index directory. docs/SERVICE.md.

``run(settings, host, port)`` serves until interrupted; ``app.create_app(settings)`` builds the application (tests);
``config.load_service_settings`` reads the settings with the seed's environment variables as aliases;
``client`` queries a running service; ``embedding`` is the seed's Python API (``get_siglip_service``,
``get_search_embedding_service``). Importing this package loads neither FastAPI nor a model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from img_search.settings import Settings

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 10  # requests in flight get this long to finish after SIGTERM; searches take milliseconds


def run(settings: Settings, host: str | None = None, port: int | None = None, *, log_level: str = "info",
        watch: Sequence[str] = ()) -> None:
    """Serve ``settings.index_dir`` on ``host``:``port`` (default ``service.host`` / ``service.port``) with uvicorn
    until SIGINT/SIGTERM. One process: the rollout state changed through the admin route lives in it. ``watch``:
    folders whose new and changed images are indexed as they come (``serve --watch``; ``jobs.watch``).

    Raises ``UnavailableError`` when the ``serve`` extra (fastapi, uvicorn) is not installed.
    """
    from img_search.errors import UnavailableError

    try:
        import uvicorn

        from img_search.service.app import create_app
    except ImportError as exc:
        raise UnavailableError(f"the service needs the serve extra: pip install 'img-search[serve]' ({exc})"
                               ) from None
    uvicorn.run(create_app(settings, watch=watch), host=settings.service.host if host is None else host,
                port=settings.service.port if port is None else port, log_level=log_level,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


__all__ = ["run"]
