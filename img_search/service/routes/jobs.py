"""Admin routes of the jobs (API key required): a full re-embedding, an index of a folder, and their status.

``POST /api/v1/admin/reembed`` and ``POST /api/v1/admin/index`` answer 202 with the new run's status;
``GET /api/v1/admin/siglip/status`` (the seed's route), ``GET /api/v1/admin/jobs/status?model=`` and
``GET /api/v1/admin/jobs/{run_id}`` follow runs. Logic lives in ``img_search.jobs``; these only translate.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from img_search.errors import NotFoundError
from img_search.service.deps import JobsDep, RegistryDep, SettingsDep, require_admin
from img_search.service.schemas import MAX_KEY_CHARS, IndexRequest, JobStatus, ReembedRequest, error_responses
from img_search.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 403, 404))


def resolve_target(name: str | None, settings: Settings, registry: Any) -> str:
    """The model a job request names: a configured collection name (image_assets, image_assets_siglip), a served
    collection or model, or the configured CLIP / SigLIP model's id (default: the SigLIP model). Anything else is
    a ``NotFoundError`` listing the choices: a request never makes a worker load an arbitrary path."""
    from img_search.embedding.hf import canonical_model_id

    svc = settings.service
    configured = {svc.clip_collection: svc.clip_model, svc.siglip_collection: svc.siglip_model,
                  svc.clip_model: svc.clip_model, svc.siglip_model: svc.siglip_model}
    if name is None:
        return canonical_model_id(svc.siglip_model)
    if name in configured:
        return canonical_model_id(configured[name])
    try:
        return str(registry.get(name).model.name)
    except NotFoundError:
        served = ", ".join(s.name for s in registry.served())
        raise NotFoundError(f"no collection or model named {name!r}; use {svc.clip_collection!r}, "
                            f"{svc.siglip_collection!r}" + (f" or a served collection ({served})" if served else "")
                            ) from None


@router.post("/reembed", response_model=JobStatus, status_code=202, responses=error_responses(413, 422, 503),
             summary="Re-embed every image with a model (seed 002, Phase 3)")
def reembed(body: ReembedRequest, settings: SettingsDep, registry: RegistryDep, jobs: JobsDep) -> JobStatus:
    """Splits every live image of the catalog into jobs of ``batch_size`` on the queue (RQ when REDIS_URL is set,
    else in this process). Vectors are upserted by content hash, so running it again is safe."""
    from img_search.jobs.queue import job_status, submit_reembedding

    model = resolve_target(body.model, settings, registry)
    queue = jobs.queue()
    meta = submit_reembedding(queue, settings, model, batch_size=body.batch_size, missing_only=body.missing_only)
    logger.warning("re-embedding with %s started: run %s", model, meta.run_id)
    return JobStatus(**job_status(queue, settings, run_id=meta.run_id))


@router.post("/index", response_model=JobStatus, status_code=202, responses=error_responses(413, 422, 503),
             summary="Index a folder inside the allowed roots")
def index(body: IndexRequest, settings: SettingsDep, registry: RegistryDep, jobs: JobsDep) -> JobStatus:
    """An index job of ``folder``: refused (403) unless the folder, with ``..``, symlinks and bind mounts
    resolved, is inside ``service.allowed_roots``."""
    from img_search.jobs.queue import FolderNotAllowedError, check_folder, job_status, submit_index

    try:
        folder = check_folder(body.folder, settings.service.allowed_roots)
    except FolderNotAllowedError as exc:
        logger.warning("index of %r refused: %s", body.folder, exc)
        raise HTTPException(403, str(exc)) from None
    model = resolve_target(body.model, settings, registry) if body.model is not None else None
    queue = jobs.queue()
    meta = submit_index(queue, settings, folder, model=model)
    return JobStatus(**job_status(queue, settings, run_id=meta.run_id))


@router.get("/siglip/status", response_model=JobStatus, responses=error_responses(503),
            summary="Progress of the SigLIP re-embedding")
def siglip_status(settings: SettingsDep, jobs: JobsDep) -> JobStatus:
    """The last re-embedding with the SigLIP model: jobs queued, running, done, failed, percent, ETA, and whether
    the SigLIP collection holds as many points as the CLIP one."""
    from img_search.embedding.hf import canonical_model_id
    from img_search.jobs.queue import job_status

    model = canonical_model_id(settings.service.siglip_model)
    return JobStatus(**job_status(jobs.queue(), settings, model=model))


@router.get("/jobs/status", response_model=JobStatus, responses=error_responses(422, 503),
            summary="Progress of the last re-embedding with a model")
def model_status(settings: SettingsDep, registry: RegistryDep, jobs: JobsDep,
                 model: Annotated[str, Query(min_length=1, max_length=MAX_KEY_CHARS,
                                             description="Collection name or model.")]) -> JobStatus:
    """As ``/siglip/status``, for any configured or served model."""
    from img_search.jobs.queue import job_status

    return JobStatus(**job_status(jobs.queue(), settings, model=resolve_target(model, settings, registry)))


@router.get("/jobs/{run_id}", response_model=JobStatus, responses=error_responses(422, 503),
            summary="Progress of one run")
def run(settings: SettingsDep, jobs: JobsDep,
        run_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$", description="The run id a POST answered.")]
        ) -> JobStatus:
    """Any run: a re-embedding or an index job."""
    from img_search.jobs.queue import job_status

    return JobStatus(**job_status(jobs.queue(), settings, run_id=run_id))
