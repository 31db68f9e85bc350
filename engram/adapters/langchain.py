"""Engram as a LangChain ``VectorStore`` (``pip install engram[langchain]``).

The miners embed the text themselves (the subnet's model), so no ``Embeddings`` object is
needed: texts go in as text and queries as text. Give one (``embedding=``) to search by
your own vectors with ``similarity_search_by_vector``. Document ids are Engram CIDs;
``ids`` given to ``add_texts`` become the ingests' idempotency keys (``request_id``), so
adding the same documents again stores nothing twice. Metadata filters are equality on
top-level keys; ``delete`` goes through the SDK's ``delete``.

::

    store = EngramVectorStore(EngramClient(url, hotkey="//Alice"), namespace="notes")
    store.add_texts(["Paris is the capital of France."], [{"topic": "geo"}])
    store.as_retriever(search_kwargs={"k": 2}).invoke("French capital")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from engram.sdk import EngramClient, IngestRefused, NotFound
from engram.sdk.models import Hit

__all__ = ["EngramEmbeddings", "EngramVectorStore"]


class EngramVectorStore(VectorStore):
    """A LangChain vector store over one Engram namespace."""

    def __init__(
        self,
        client: EngramClient | None = None,
        *,
        namespace: str | None = None,
        embedding: Embeddings | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.client = client if client is not None else EngramClient(**client_kwargs)
        self.namespace = namespace if namespace is not None else self.client.namespace
        self._embedding = embedding

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # --- writing ------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Store ``texts`` (with ``metadatas``); returns their CIDs. Raises the SDK's
        :class:`~engram.sdk.IngestRefused` if the miner refuses any (none is lost:
        the others are stored, and adding all again is safe)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError("metadatas must match texts one to one")
        if ids is not None and len(ids) != len(texts):
            raise ValueError("ids must match texts one to one")
        items = []
        for i, text in enumerate(texts):
            item: dict[str, Any] = {"text": text, "metadata": (metadatas or [{}] * len(texts))[i]}
            if ids is not None and ids[i]:
                item["request_id"] = ids[i]
            items.append(item)
        results = self.client.batch_ingest(items, namespace=self.namespace)
        failed = [r for r in results if not r.ok]
        if failed:
            first = failed[0]
            raise IngestRefused(
                400,
                f"{len(failed)} of {len(texts)} texts refused; item {first.index}: {first.error}",
            )
        return [str(r.cid) for r in results]

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the memories with these CIDs (through the SDK's ``delete``)."""
        if not ids:
            return None
        for cid in ids:
            self.client.delete(cid)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        out = []
        for cid in ids:
            try:
                mem = self.client.get(cid, namespace=self.namespace)
            except NotFound:
                continue
            out.append(Document(page_content=mem.text or "", metadata=mem.metadata, id=mem.cid))
        return out

    # --- searching ----------------------------------------------------------------------

    @staticmethod
    def _doc(hit: Hit) -> Document:
        return Document(page_content=hit.text or "", metadata=hit.metadata, id=hit.cid)

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The ``k`` closest documents with their cosine similarity (higher is closer)."""
        hits = self.client.query(
            query, top_k=k, namespace=self.namespace, filter=filter, include_text=True
        )
        return [(self._doc(h), h.score) for h in hits]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _s in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self.client.query_by_vector(
            embedding, top_k=k, namespace=self.namespace, filter=filter, include_text=True
        )
        return [self._doc(h) for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # the score is already a cosine similarity: clip it to LangChain's [0, 1]
        return lambda score: max(0.0, min(1.0, score))

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        client: EngramClient | None = None,
        namespace: str | None = None,
        **kwargs: Any,
    ) -> EngramVectorStore:
        """A store over ``client`` (or one made from ``kwargs``) holding ``texts``."""
        store = cls(client, namespace=namespace, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store


class EngramEmbeddings(Embeddings):
    """The subnet's embedding model (int8 all-MiniLM-L6-v2, what the miners run) loaded
    locally as LangChain ``Embeddings``: vectors identical to the miners', for
    ``similarity_search_by_vector`` or any LangChain component that embeds."""

    def __init__(self, embedder: Any = None) -> None:
        if embedder is None:
            from engram.miner.embedder import get_embedder

            embedder = get_embedder()
        self._embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self._embedder.embed(texts)]

    def embed_query(self, text: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_one(text)]
