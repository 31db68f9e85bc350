"""Engram as a LlamaIndex vector store (``pip install engram[llamaindex]``).

:class:`EngramVectorStore` is a ``BasePydanticVectorStore`` that stores text (the miners
embed it with the subnet's model) and answers queries by text, so retrieval needs no
local model. LlamaIndex still embeds nodes when building an index: give it
:class:`EngramEmbedding`, the same model the miners run, loaded locally (or any other
embed model; Engram ignores node vectors and stores the text).

Node ids are Engram CIDs; each memory keeps its LlamaIndex ``doc_id`` and ``node_id`` in
its metadata, so ``delete(ref_doc_id)`` finds a document's memories (listing the
namespace with a metadata filter) and removes each through the SDK's ``delete``.
Metadata filters: equality (``FilterOperator.EQ``) combined with AND.

::

    store = EngramVectorStore(client=EngramClient(url, hotkey="//Alice"), namespace="docs")
    index = VectorStoreIndex.from_vector_store(store, embed_model=EngramEmbedding())
    index.as_retriever(similarity_top_k=2).retrieve("French capital")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from engram.sdk import EngramClient, IngestRefused, InputError

__all__ = ["EngramEmbedding", "EngramVectorStore", "filters_to_engram"]

DOC_ID = "doc_id"
NODE_ID = "node_id"


def filters_to_engram(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex filters as an Engram equality filter (EQ only, combined with AND)."""
    if filters is None or not filters.filters:
        return None
    if filters.condition not in (None, FilterCondition.AND):
        raise InputError("Engram filters combine with AND only")
    out: dict[str, Any] = {}
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            raise InputError("Engram filters cannot be nested")
        if f.operator != FilterOperator.EQ:
            raise InputError(f"Engram filters are equality only (not {f.operator.value})")
        out[f.key] = f.value
    return out


class EngramVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one Engram namespace."""

    stores_text: bool = True
    is_embedding_query: bool = False  # queries go as text; the miner embeds them
    namespace: str = "public"

    _client: EngramClient = PrivateAttr()

    def __init__(
        self, client: EngramClient | None = None, namespace: str | None = None, **kwargs: Any
    ) -> None:
        client = client if client is not None else EngramClient(**kwargs)
        super().__init__(stores_text=True)
        self.namespace = namespace if namespace is not None else client.namespace
        self._client = client

    @property
    def client(self) -> EngramClient:
        return self._client

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Store each node's text and metadata; returns their CIDs."""
        items = []
        for node in nodes:
            meta = dict(node.metadata)
            meta[NODE_ID] = node.node_id
            if node.ref_doc_id is not None:
                meta[DOC_ID] = node.ref_doc_id
            items.append(
                {
                    "text": node.get_content(metadata_mode=MetadataMode.NONE),
                    "metadata": meta,
                    "request_id": f"li-{node.node_id}",
                }
            )
        results = self._client.batch_ingest(items, namespace=self.namespace)
        failed = [r for r in results if not r.ok]
        if failed:
            raise IngestRefused(400, f"{len(failed)} nodes refused; first: {failed[0].error}")
        return [str(r.cid) for r in results]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every memory of the document ``ref_doc_id`` (SDK ``list`` + ``delete``)."""
        cids: list[str] = []
        cursor: str | None = None
        while True:
            page = self._client.list(
                self.namespace, limit=100, cursor=cursor, filter={DOC_ID: ref_doc_id}
            )
            cids += [m.cid for m in page.memories]
            cursor = page.next_cursor
            if cursor is None:
                break
        for cid in cids:
            self._client.delete(cid)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete memories by CID (the ids ``add`` returned)."""
        if filters is not None:
            raise InputError("delete_nodes takes node ids (CIDs), not filters")
        for cid in node_ids or []:
            self._client.delete(cid)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        flt = filters_to_engram(query.filters)
        k = query.similarity_top_k
        if query.query_str is not None and query.query_embedding is None:
            hits = self._client.query(
                query.query_str, k, namespace=self.namespace, filter=flt, include_text=True
            )
        elif query.query_embedding is not None:
            hits = self._client.query_by_vector(
                query.query_embedding, k, namespace=self.namespace, filter=flt, include_text=True
            )
        else:
            raise InputError("a query needs query_str or query_embedding")
        nodes: list[BaseNode] = []
        for h in hits:
            meta = dict(h.metadata)
            ref = meta.get(DOC_ID)
            node = TextNode(text=h.text or "", id_=h.cid, metadata=meta)
            if isinstance(ref, str):
                from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

                node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
            nodes.append(node)
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[h.score for h in hits], ids=[h.cid for h in hits]
        )


class EngramEmbedding(BaseEmbedding):
    """The subnet's embedding model run locally (the int8 all-MiniLM-L6-v2 the miners
    use), as a LlamaIndex embed model: vectors identical to the miners'."""

    model_name: str = "all-MiniLM-L6-v2-int8"
    _embedder: Any = PrivateAttr()

    def __init__(self, embedder: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if embedder is None:
            from engram.miner.embedder import get_embedder

            embedder = get_embedder()
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_one(query)]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self._embedder.embed(texts)]
