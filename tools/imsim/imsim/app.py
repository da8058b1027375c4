"""The FastAPI app: DingTalk's gateway and OpenAPI, the sim API and the chat page."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from imsim import gateway, openapi, page, sim_api
from imsim.call_recorder import ApiCallRecorder
from imsim.dispatcher import StreamDispatcher
from imsim.errors import OpenApiError, open_api_error_handler, render_open_api_error
from imsim.settings import Settings
from imsim.state import SimState


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    """DingTalk answers a malformed OpenAPI body with 400 `{code, message}`; the sim API keeps
    FastAPI's 422 with details."""
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith("/v1.0/"):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:])}: {error['msg']}" for error in exc.errors()
        )
        return render_open_api_error(OpenApiError(400, "InvalidParameter", problems))
    return await request_validation_exception_handler(request, exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = SimState()
    for spec in settings.apps:
        state.upsert_app(spec.client_id, spec.client_secret, robot_code=spec.robot_code)
    dispatcher = StreamDispatcher(state, tick=settings.timer_tick)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with dispatcher:
            yield

    app = FastAPI(title="imsim", summary="Local DingTalk simulator", lifespan=lifespan)
    app.state.settings = settings
    app.state.sim = state
    app.state.dispatcher = dispatcher
    app.add_middleware(ApiCallRecorder)
    app.add_exception_handler(OpenApiError, open_api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.include_router(gateway.router)
    app.include_router(openapi.router)
    app.include_router(sim_api.router)
    app.include_router(page.router)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True})

    return app
