"""The FastAPI app: every registered platform's servers, the shared sim API and the chat page."""

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from imsim import page, sim_api
from imsim.call_recorder import ApiCallRecorder
from imsim.platform import SimPlatform, UnknownApp
from imsim.registry import PLATFORMS
from imsim.settings import Settings


async def _unknown_app_handler(_request: Request, exc: Exception) -> Response:
    return JSONResponse(status_code=404, content={"detail": f"unknown app {str(exc)!r}"})


def create_app(
    settings: Settings | None = None, platforms: Sequence[type[SimPlatform]] | None = None
) -> FastAPI:
    """`platforms` defaults to every registered one."""
    settings = settings or Settings()
    served = {cls.name: cls(settings) for cls in (PLATFORMS.values() if platforms is None else platforms)}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for platform in served.values():
                await stack.enter_async_context(platform)
            yield

    async def validation_error_handler(request: Request, exc: Exception) -> Response:
        """A malformed body on a platform's API is answered the platform's way; the sim API keeps
        FastAPI's 422 with details."""
        assert isinstance(exc, RequestValidationError)
        for platform in served.values():
            if request.url.path.startswith(platform.api_prefixes):
                answer = platform.validation_error(exc)
                if answer is not None:
                    return answer
        return await request_validation_exception_handler(request, exc)

    app = FastAPI(title="imsim", summary="Local IM platform simulator", lifespan=lifespan)
    app.state.settings = settings
    app.state.platforms = served
    app.add_middleware(
        ApiCallRecorder, prefixes=[prefix for p in served.values() for prefix in p.api_prefixes]
    )
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(UnknownApp, _unknown_app_handler)
    for platform in served.values():
        for error, handler in platform.exception_handlers().items():
            app.add_exception_handler(error, handler)
        for router in platform.routers():
            app.include_router(router)
    app.include_router(sim_api.router)
    app.include_router(page.router)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    return app
