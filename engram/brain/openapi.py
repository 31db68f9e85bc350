"""The brain API's OpenAPI 3.1 document (served at ``/openapi.json``), written by hand."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]

_ERROR = {
    "description": "refused",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}


def _op(summary: str, body: str | None = None, ok: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "ok"}, "400": _ERROR, "401": _ERROR},
    }
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


MSG_REF = "#/components/schemas/Message"


def openapi() -> dict[str, Any]:
    msg = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Engram brain",
            "version": "1",
            "description": "A memory-augmented LLM runtime: OpenAI-compatible chat whose "
            "prompts recall the user's Engram memories (docs/architecture.md, Brain).",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": _op(
                    "Chat completion (SSE when stream); memories used are in `memories`",
                    "ChatRequest",
                )
            },
            "/v1/models": {"get": _op("The current model")},
            "/v1/feedback": {"post": _op("Score or correct a completion", "Feedback", "202")},
            "/v1/auth/nonce": {"post": _op("A one-time message to sign", "NonceRequest")},
            "/v1/auth/verify": {"post": _op("Signed nonce → session token", "Verify")},
            "/v1/memories": {
                "post": _op("Add memories (mem0-style)", "MemoryAdd", "202"),
                "get": _op("List a user's memories (?user_id=)"),
            },
            "/v1/memories/search": {
                "post": _op("Hybrid search of a user's memories", "MemorySearch")
            },
            "/v1/memories/{id}": {
                "get": _op("One memory"),
                "put": _op("Replace a memory's text", "MemoryUpdate", "202"),
                "delete": _op("Delete a memory", None, "202"),
            },
            "/v1/memories/{id}/history": {"get": _op("The memory's history, from the events")},
            "/admin/model": {"post": _op("Hot-swap the model (ModelSwapped)", "ModelSwap")},
            "/api/llm/query": {"post": _op("Seed alias: {prompt, user} → {answer}", "Query")},
            "/api/llm/train": {
                "post": _op(
                    "Export the training dataset (DatasetExported) and, with a trainer "
                    "configured, start a training job (202 with the job)"
                )
            },
            "/api/llm/train/{job_id}": {
                "get": _op("A training job: queued, running, retrying, trained, swapped_in")
            },
            "/api/system/logs": {"get": _op("SSE of the brain's events (?kind=&user=)")},
            "/api/user/create": {
                "post": _op("Create a user (its memory namespace)", "User", "201")
            },
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
                "Message": msg,
                "ChatRequest": {
                    "type": "object",
                    "required": ["messages"],
                    "properties": {
                        "model": {"type": "string"},
                        "messages": {
                            "type": "array",
                            "items": {"$ref": MSG_REF},
                        },
                        "stream": {"type": "boolean"},
                        "stream_options": {
                            "type": "object",
                            "properties": {"include_usage": {"type": "boolean"}},
                        },
                        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 4096},
                        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                        "user": {"type": "string", "description": "whose memory (brain.<user>)"},
                        "memory": {
                            "type": "object",
                            "properties": {
                                "user_id": {"type": "string"},
                                "agent_id": {"type": "string"},
                                "session_id": {"type": "string"},
                                "top_k": {"type": "integer", "minimum": 0, "maximum": 100},
                                "write": {"type": "boolean"},
                            },
                        },
                    },
                },
                "Feedback": {
                    "type": "object",
                    "required": ["completion_id"],
                    "properties": {
                        "completion_id": {"type": "string"},
                        "score": {"type": "number"},
                        "correction": {"type": "string"},
                    },
                },
                "NonceRequest": {
                    "type": "object",
                    "properties": {
                        "address": {"type": "string"},
                        "scheme": {"enum": ["solana", "btauth"]},
                    },
                },
                "Verify": {
                    "type": "object",
                    "properties": {
                        "address": {"type": "string"},
                        "scheme": {"enum": ["solana", "btauth"]},
                        "nonce": {"type": "string"},
                        "signature": {"type": "string"},
                    },
                },
                "MemoryAdd": {
                    "type": "object",
                    "properties": {
                        "user_id": {"type": "string"},
                        "memory": {"type": "string"},
                        "messages": {
                            "type": "array",
                            "items": {"$ref": MSG_REF},
                        },
                        "run_id": {"type": "string"},
                        "agent_id": {"type": "string"},
                    },
                },
                "MemorySearch": {
                    "type": "object",
                    "properties": {
                        "user_id": {"type": "string"},
                        "query": {"type": "string"},
                        "top_k": {"type": "integer"},
                        "mode": {"enum": ["hybrid", "dense", "bm25"]},
                    },
                },
                "MemoryUpdate": {"type": "object", "properties": {"memory": {"type": "string"}}},
                "ModelSwap": {
                    "type": "object",
                    "properties": {
                        "engine": {"enum": ["llama", "openai"]},
                        "path": {"type": "string"},
                        "adapter": {"type": "string", "description": "a LoRA GGUF (llama)"},
                        "name": {"type": "string"},
                        "url": {"type": "string"},
                    },
                },
                "Query": {
                    "type": "object",
                    "properties": {
                        "prompt": {"type": "string"},
                        "user": {"type": "string"},
                        "session_id": {"type": "string"},
                    },
                },
                "User": {"type": "object", "properties": {"user": {"type": "string"}}},
            },
            "securitySchemes": {"session": {"type": "http", "scheme": "bearer"}},
        },
    }
