"""``GET`` / ``POST /api/v1/admin/rollout``: read and change the SigLIP rollout at run time (API key required)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends

from img_search.service.deps import RouterDep, require_admin
from img_search.service.schemas import RolloutRequest, RolloutStatus, error_responses

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 403, 404))


@router.get("/rollout", response_model=RolloutStatus, summary="The SigLIP rollout")
def get_rollout(router_: RouterDep) -> RolloutStatus:
    """The percentage, the force flag, and what the next request meets."""
    return RolloutStatus(**router_.status())


@router.post("/rollout", response_model=RolloutStatus, responses=error_responses(413, 422),
             summary="Change or roll back the SigLIP rollout")
def set_rollout(body: RolloutRequest, router_: RouterDep) -> RolloutStatus:
    """Takes effect for the next request, no restart (``percentage: 0`` rolls back to CLIP). ``force`` routes
    SigLIP's share to it even while its collection is incomplete. Lost at restart: the settings apply again."""
    router_.rollout.set(body.percentage, force=body.force)
    status = RolloutStatus(**router_.status())
    logger.warning("rollout now: %s", status.reason)
    return status
