"""HTTP routes of /api/v1/agents."""

from fastapi import APIRouter

from imgate_admin.agents import service
from imgate_admin.agents.schemas import AgentCreate, AgentRead
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody

router = APIRouter(prefix="/agents", tags=["agents"])


@router.post(
    "",
    status_code=201,
    response_model=AgentRead,
    responses={409: {"model": ErrorBody, "description": "The name is taken"}},
)
async def create_agent(body: AgentCreate, session: SessionDep, resources: ResourcesDep) -> AgentRead:
    return AgentRead.from_row(await service.create_agent(session, resources.box, body))


@router.get("", response_model=list[AgentRead])
async def list_agents(session: SessionDep) -> list[AgentRead]:
    return [AgentRead.from_row(a) for a in await service.list_agents(session)]


@router.get("/{agent_id}", response_model=AgentRead, responses={404: {"model": ErrorBody}})
async def get_agent(agent_id: int, session: SessionDep) -> AgentRead:
    return AgentRead.from_row(await service.get_agent(session, agent_id))
