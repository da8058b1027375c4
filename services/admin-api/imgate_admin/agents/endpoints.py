"""HTTP routes of /api/v1/agents."""

from fastapi import APIRouter

from imgate_admin.agents import service
from imgate_admin.agents.schemas import AgentCreate, AgentRead, AgentTestRequest, AgentTestResult, AgentUpdate
from imgate_admin.agents.tester import AgentTester
from imgate_admin.auth import ActorDep
from imgate_admin.deps import ResourcesDep, SessionDep
from imgate_admin.errors import ErrorBody, Responses
from imgate_admin.schemas import IdPath
from imgate_common.channels import agent_api_key
from imgate_common.messages import ConfigKind

router = APIRouter(prefix="/agents", tags=["agents"])

NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No agent has this id"}}


@router.post(
    "",
    status_code=201,
    response_model=AgentRead,
    responses={409: {"model": ErrorBody, "description": "The name is taken"}},
)
async def create_agent(
    body: AgentCreate, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> AgentRead:
    return AgentRead.from_row(await service.create_agent(session, resources.box, actor, body))


@router.get("", response_model=list[AgentRead])
async def list_agents(session: SessionDep) -> list[AgentRead]:
    return [AgentRead.from_row(a) for a in await service.list_agents(session)]


@router.get("/{agent_id}", response_model=AgentRead, responses=NOT_FOUND)
async def get_agent(agent_id: IdPath, session: SessionDep) -> AgentRead:
    return AgentRead.from_row(await service.get_agent(session, agent_id))


@router.patch(
    "/{agent_id}",
    response_model=AgentRead,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "The name is taken"}},
)
async def update_agent(
    agent_id: IdPath, body: AgentUpdate, session: SessionDep, resources: ResourcesDep, actor: ActorDep
) -> AgentRead:
    """Change some fields; channels using the agent are told to reload."""
    agent = await service.update_agent(session, resources.box, resources.control, actor, agent_id, body)
    return AgentRead.from_row(agent)


@router.delete(
    "/{agent_id}",
    status_code=204,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "A channel uses the agent"}},
)
async def delete_agent(
    agent_id: IdPath, session: SessionDep, actor: ActorDep, resources: ResourcesDep
) -> None:
    await service.delete_agent(session, actor, agent_id)
    await resources.control.announce(ConfigKind.AGENT, agent_id)  # runners cache agents


@router.post("/{agent_id}/test", response_model=AgentTestResult, responses=NOT_FOUND)
async def test_agent(
    agent_id: IdPath, session: SessionDep, resources: ResourcesDep, body: AgentTestRequest | None = None
) -> AgentTestResult:
    """Send one short prompt to the agent's model and report the answer or why there was none."""
    agent = await service.get_agent(session, agent_id)
    tester = AgentTester(resources.http, resources.settings.agent_test_timeout_s)
    prompt = (body or AgentTestRequest()).prompt
    try:
        api_key = agent_api_key(agent, resources.box)
    except ValueError:  # encrypted under a key no longer configured (see secret rotation)
        return AgentTestResult(
            result="failed",
            category="not_configured",
            message="the stored API key cannot be decrypted with the configured keys; enter it again",
        )
    result = await tester.test(agent, api_key, prompt)
    resources.metrics.agent_tests.labels(agent.provider, result.result).inc()
    return result
