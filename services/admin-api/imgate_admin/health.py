"""Liveness probe; open to everyone so orchestrators need no token."""

from fastapi import APIRouter
from pydantic import BaseModel

router = APIRouter(tags=["health"])


class Health(BaseModel):
    ok: bool


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(ok=True)
