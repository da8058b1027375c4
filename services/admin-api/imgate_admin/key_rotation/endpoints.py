"""HTTP route /api/v1/secrets/rotate."""

from fastapi import APIRouter

from imgate_admin.auth import ActorDep
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.key_rotation.service import RotationReport, rotate_secrets

router = APIRouter(prefix="/secrets", tags=["secrets"])


@router.post("/rotate", response_model=RotationReport)
async def rotate(session: SessionDep, resources: ResourcesDep, actor: ActorDep) -> RotationReport:
    """Re-encrypt every stored secret under the first key of IMGATE_SECRET_KEYS (see the README's
    key rotation steps). `unreadable` lists secrets no configured key opens."""
    return await rotate_secrets(session, resources.box, actor)
