"""A stand-in for a hosted OpenAI API (a paid service cannot run in tests), on real HTTP.

It implements what the brain uses, as OpenAI documents it: ``POST /v1/chat/completions``
(JSON and SSE streaming), ``POST /v1/files`` (multipart) and ``GET /v1/files``, and the
fine-tuning jobs API (create, retrieve, list with a metadata filter, events). A job moves
validating_files → queued → running → succeeded, one step per retrieve, and its model
``ft:<base>:engram:<suffix>`` then answers the exact prompts it was trained on with the
trained answers. Tests script the rest with ``reply`` (model, messages → text or an HTTP
status) and ``fail_jobs`` (the jobs fail with that message).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

Reply = Callable[[str, list[dict[str, Any]]], "str | int"]


def _error(status: int, message: str, code: str = "invalid_request_error") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": code, "param": None, "code": code}},
        status=status,
    )


class FakeOpenAI:
    def __init__(self) -> None:
        self.reply: Reply = lambda model, messages: "I do not know."
        self.fail_jobs: str = ""
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.trained: dict[str, dict[str, str]] = {}  # model → prompt → answer
        self.chats: list[tuple[str, list[dict[str, Any]]]] = []
        self.created_jobs = 0
        self.job_filters: list[dict[str, str]] = []  # the metadata filters of job listings
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files", self.list_files)
        app.router.add_post("/v1/fine_tuning/jobs", self.create_job)
        app.router.add_get("/v1/fine_tuning/jobs", self.list_jobs)
        app.router.add_get("/v1/fine_tuning/jobs/{id}", self.retrieve_job)
        app.router.add_get("/v1/fine_tuning/jobs/{id}/events", self.job_events)
        return app

    # --- chat -----------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, messages = body.get("model", ""), body.get("messages") or []
        self.chats.append((model, messages))
        if model.startswith("ft:"):
            if model not in self.trained:
                return _error(404, f"The model {model} does not exist", "model_not_found")
            prompt = str(messages[-1].get("content", "")) if messages else ""
            reply: str | int = self.trained[model].get(prompt, "I do not know.")
        else:
            reply = self.reply(model, messages)
        if isinstance(reply, int):
            return _error(reply, "the fake API was told to fail", "server_error")
        cid = f"chatcmpl-fake{next(self._ids)}"
        usage = {"prompt_tokens": 10, "completion_tokens": len(reply.split()), "total_tokens": 0}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        base = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": model}
        for word in reply.split(" "):
            piece = word if word == reply.split(" ")[0] else " " + word
            await send({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # --- files ----------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune":
            return _error(400, f"purpose must be fine-tune, not {purpose!r}")
        if not isinstance(upload, web.FileField):
            return _error(400, "file: a multipart file is required")
        data = upload.file.read()
        for i, line in enumerate(data.decode().splitlines(), 1):
            row = json.loads(line)
            messages = row.get("messages")
            if not isinstance(messages, list) or messages[-1].get("role") != "assistant":
                return _error(400, f"line {i}: messages must end with an assistant message")
        fid = f"file-{next(self._ids)}"
        self.contents[fid] = data
        self.files[fid] = {
            "id": fid,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": "fine-tune",
            "status": "processed",
        }
        return web.json_response(self.files[fid])

    async def list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        data = [f for f in self.files.values() if not purpose or f["purpose"] == purpose]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    # --- fine-tuning jobs -----------------------------------------------------------------

    async def create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("training_file") not in self.files:
            return _error(400, f"training_file {body.get('training_file')!r} does not exist")
        if not body.get("model") or str(body["model"]).startswith("unknown"):
            return _error(400, f"model {body.get('model')!r} is not available for fine-tuning")
        self.created_jobs += 1
        jid = f"ftjob-{next(self._ids)}"
        self.jobs[jid] = {
            "id": jid,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": None,
            "finished_at": None,
            "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 2},
            "model": body["model"],
            "organization_id": "org-engram",
            "result_files": [],
            "seed": 0,
            "status": "validating_files",
            "trained_tokens": None,
            "training_file": body["training_file"],
            "validation_file": None,
            "metadata": body.get("metadata"),
            "suffix": body.get("suffix") or "",
        }
        self.events[jid] = [self._event(jid, "Created fine-tuning job")]
        return web.json_response(self._public(self.jobs[jid]))

    def _event(self, jid: str, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": f"ftevent-{next(self._ids)}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": "info",
            "message": message,
            "data": data,
            "type": "metrics" if data else "message",
        }

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k != "suffix"}

    def _advance(self, job: dict[str, Any]) -> None:
        jid, status = job["id"], job["status"]
        if status == "validating_files":
            job["status"] = "queued"
        elif status == "queued":
            job["status"] = "running"
            self.events[jid].append(
                self._event(jid, "Step 1/2", {"step": 1, "total_steps": 2, "train_loss": 1.5})
            )
        elif status == "running":
            job["finished_at"] = int(time.time())
            if self.fail_jobs:
                job["status"] = "failed"
                job["error"] = {"code": "server_error", "message": self.fail_jobs, "param": None}
                return
            self.events[jid].append(
                self._event(jid, "Step 2/2", {"step": 2, "total_steps": 2, "train_loss": 0.25})
            )
            model = f"ft:{job['model']}:engram:{job['suffix']}"
            lessons: dict[str, str] = {}
            for line in self.contents[job["training_file"]].decode().splitlines():
                messages = json.loads(line)["messages"]
                lessons[messages[-2]["content"]] = messages[-1]["content"]
            self.trained[model] = lessons
            job["status"], job["fine_tuned_model"] = "succeeded", model
            job["trained_tokens"] = sum(len(a.split()) for a in lessons.values())

    async def retrieve_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return _error(404, "no such job")
        self._advance(job)
        return web.json_response(self._public(job))

    async def list_jobs(self, request: web.Request) -> web.Response:
        wanted = {
            k[len("metadata[") : -1]: v
            for k, v in request.query.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        self.job_filters.append(wanted)
        jobs = [
            self._public(j)
            for j in reversed(self.jobs.values())
            if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())
        ]
        limit = int(request.query.get("limit", "20"))
        return web.json_response(
            {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}
        )

    async def job_events(self, request: web.Request) -> web.Response:
        jid = request.match_info["id"]
        if jid not in self.jobs:
            return _error(404, "no such job")
        events = list(reversed(self.events[jid]))  # newest first, as the API lists them
        return web.json_response({"object": "list", "data": events, "has_more": False})
