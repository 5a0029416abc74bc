"""ComfyUI's newer queue view, /jobs: queued, running and finished prompts as one list of jobs, answered as
current ComfyUI's `comfy_execution/jobs.py` shapes them (its frontend's queue panel reads only this).

A job is `{id, status, priority, create_time, outputs_count, ...}`; a finished one adds its start and end
times, its error and a preview output; `GET /jobs/{id}` adds the outputs, the status messages and the prompt.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .prompts import int_query
from .queue_store import QueueItem
from .responses import ApiError, json_response, read_json_object
from .state import STATE

STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
"""What ?status= may name; an interrupted run is in the history as an error, so no job is ever "cancelled"."""
PREVIEWABLE = frozenset({"images", "video", "audio"})


def _create_time(extra_data: dict[str, Any], messages: list[Any] | None = None) -> int:
    """ComfyUI stamps `extra_data.create_time` (ms) on submission; ours is the run's start, else 0."""
    stamp = extra_data.get("create_time")
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return int(stamp)
    for event, data in messages or []:
        if event == "execution_start" and isinstance(data, dict) and isinstance(data.get("timestamp"), int):
            return data["timestamp"]
    return 0


def _workflow_id(extra_data: dict[str, Any]) -> str | None:
    workflow = (extra_data.get("extra_pnginfo") or {}).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) and isinstance(workflow.get("id"), str) else None


def queued_job(item: QueueItem, status: str) -> dict[str, Any]:
    job = {"id": item.prompt_id, "status": status, "priority": item.as_comfy()[0],
           "create_time": _create_time(item.extra_data), "outputs_count": 0}
    workflow_id = _workflow_id(item.extra_data)
    if workflow_id:
        job["workflow_id"] = workflow_id
    return job


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """How many output items there are, and the one to preview (an `output` image first)."""
    count, preview, fallback = 0, None, None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and media_type in PREVIEWABLE:
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


def finished_job(prompt_id: str, entry: dict[str, Any], *, full: bool = False) -> dict[str, Any]:
    status_info = entry.get("status") or {}
    messages = status_info.get("messages") or []
    number, _, prompt, extra_data, _ = entry["prompt"]
    count, preview = outputs_summary(entry.get("outputs") or {})
    job: dict[str, Any] = {"id": prompt_id, "status": "failed" if status_info.get("status_str") == "error" else
                           "completed", "priority": number, "create_time": _create_time(extra_data, messages),
                           "outputs_count": count}
    for event, data in messages:
        if not isinstance(data, dict):
            continue
        if event == "execution_start":
            job["execution_start_time"] = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            job["execution_end_time"] = data.get("timestamp")
            if event == "execution_error":
                job["execution_error"] = data
    if preview is not None:
        job["preview_output"] = preview
    workflow_id = _workflow_id(extra_data)
    if workflow_id:
        job["workflow_id"] = workflow_id
    if full:
        job.update(outputs=entry.get("outputs") or {}, execution_status=status_info,
                   workflow={"prompt": prompt, "extra_data": extra_data})
    return job


async def get_jobs(request: web.Request) -> web.Response:
    """?status=pending,in_progress,completed,failed &workflow_id= &sort_by=created_at|execution_duration
    &sort_order=asc|desc &limit= &offset=: `{jobs, pagination: {offset, limit, total, has_more}}`."""
    state = request.app[STATE]
    wanted = [s for s in request.query.get("status", ",".join(STATUSES)).split(",") if s] or list(STATUSES)
    unknown = sorted(set(wanted) - set(STATUSES))
    if unknown:
        raise ApiError(400, "invalid_request", f"Unknown job status {', '.join(unknown)}", ", ".join(STATUSES))
    limit, offset = int_query(request, "limit"), int_query(request, "offset") or 0
    if (limit is not None and limit < 0) or offset < 0:
        raise ApiError(400, "invalid_request", "limit and offset must not be negative")
    running, pending = await state.db(state.store.queue)
    jobs = [queued_job(item, "in_progress") for item in running if "in_progress" in wanted]
    jobs += [queued_job(item, "pending") for item in pending if "pending" in wanted]
    if "completed" in wanted or "failed" in wanted:
        history = await state.db(state.store.history)
        jobs += [job for job in (finished_job(pid, entry) for pid, entry in history.items())
                 if job["status"] in wanted]
    workflow_id = request.query.get("workflow_id")
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    if request.query.get("sort_by") == "execution_duration":
        def key(job: dict[str, Any]) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return end - start if start and end else 0
    else:
        def key(job: dict[str, Any]) -> float:
            return job.get("create_time") or 0
    jobs.sort(key=key, reverse=request.query.get("sort_order", "desc") != "asc")
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
    return json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit if limit is not None else total,
                                                       "total": total, "has_more": offset + len(page) < total}})


async def get_job(request: web.Request) -> web.Response:
    """One job with its outputs and prompt; 404 for an unknown id."""
    state = request.app[STATE]
    prompt_id = request.match_info["job_id"]
    entry = await state.db(state.store.history_item, prompt_id)
    if entry is not None:
        return json_response(finished_job(prompt_id, entry, full=True))
    running, pending = await state.db(state.store.queue)
    for items, status in ((running, "in_progress"), (pending, "pending")):
        for item in items:
            if item.prompt_id == prompt_id:
                return json_response(queued_job(item, status))
    raise ApiError(404, "not_found", "Job not found", prompt_id)


async def _cancel(request: web.Request, prompt_ids: list[str]) -> int:
    """Remove pending ones and stop the running one among `prompt_ids`; how many were touched."""
    state = request.app[STATE]
    touched = await state.db(state.store.delete_pending, prompt_ids)
    for prompt_id in prompt_ids:
        if state.worker.interrupt(prompt_id):
            touched += 1
    state.broadcast_status(await state.db(state.store.remaining))
    return touched


async def post_cancel_job(request: web.Request) -> web.Response:
    """Cancel one job: a pending one leaves the queue, the running one is interrupted."""
    return json_response({"cancelled": await _cancel(request, [request.match_info["job_id"]])})


async def post_cancel_jobs(request: web.Request) -> web.Response:
    """Cancel several jobs: `{job_ids: [...]}`."""
    body = await read_json_object(request)
    ids = body.get("job_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, "invalid_request", "job_ids must be a list of job ids")
    return json_response({"cancelled": await _cancel(request, ids)})
