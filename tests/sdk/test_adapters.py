"""The LangChain and LlamaIndex adapters through their frameworks' own entry points, with
the real framework packages, against the real signed miner."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from llama_index.core import Document as LIDocument
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.vector_stores import (
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.types import BasePydanticVectorStore

from engram.adapters import langchain as lc
from engram.adapters import llamaindex as li
from engram.miner.embedder import Embedder
from engram.sdk import EngramClient, InputError

from .conftest import CLIENT

FACTS = [
    ("Paris is the capital of France.", {"topic": "geo"}),
    ("The mitochondria is the powerhouse of the cell.", {"topic": "bio"}),
    ("Mount Everest is the highest mountain on Earth.", {"topic": "geo"}),
    ("Photosynthesis happens in chloroplasts.", {"topic": "bio"}),
]


@pytest.fixture
def client(url: str, ns: str) -> EngramClient:
    return EngramClient(url, hotkey=CLIENT, namespace=ns)


# --- LangChain ---------------------------------------------------------------------------


def test_langchain_vectorstore_add_search_filter_retrieve(client: EngramClient, ns: str) -> None:
    store = lc.EngramVectorStore(client)
    assert isinstance(store, VectorStore) and store.embeddings is None
    docs = [Document(page_content=t, metadata=m) for t, m in FACTS]
    ids = store.add_documents(docs)
    assert len(ids) == 4 and all(i.startswith("v1::") for i in ids)

    scored = store.similarity_search_with_score("What is the capital city of France?", k=2)
    top, score = scored[0]
    assert top.page_content == FACTS[0][0] and top.id == ids[0] and top.metadata == {"topic": "geo"}
    assert score > scored[1][1]

    bio = store.similarity_search("tallest peak in the world", k=4, filter={"topic": "bio"})
    assert {d.page_content for d in bio} == {FACTS[1][0], FACTS[3][0]}

    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert isinstance(retriever, VectorStoreRetriever)
    (doc,) = retriever.invoke("highest mountain")
    assert doc.page_content == FACTS[2][0]

    relevant = store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.5, "k": 4}
    ).invoke("capital of France")
    assert [d.page_content for d in relevant] == [FACTS[0][0]]

    assert [d.page_content for d in store.get_by_ids([ids[1], "v1::" + "0" * 64])] == [FACTS[1][0]]


def test_langchain_ids_are_idempotency_keys_and_from_texts(client: EngramClient, ns: str) -> None:
    store = lc.EngramVectorStore.from_texts(
        ["alpha", "beta"], metadatas=[{"n": 1}, {"n": 2}], ids=["a", "b"], client=client
    )
    again = store.add_texts(["alpha", "beta"], [{"n": 1}, {"n": 2}], ids=["a", "b"])
    assert client.stats()["namespaces"][ns] == 2
    assert again == [d.id for d in store.get_by_ids(again)]
    with pytest.raises(InputError):
        store.add_texts(["fine", "   "])  # the miner refuses blank text


def test_langchain_search_by_the_miners_own_vectors(
    client: EngramClient, sdk_embedder: Embedder
) -> None:
    emb = lc.EngramEmbeddings(sdk_embedder)
    store = lc.EngramVectorStore(client, embedding=emb)
    assert store.embeddings is emb
    ids = store.add_texts([t for t, _m in FACTS], [m for _t, m in FACTS])
    (doc,) = store.similarity_search_by_vector(emb.embed_query("capital of France"), k=1)
    assert doc.page_content == FACTS[0][0] and doc.id == ids[0]
    # the local model gives the miner's own vector: the stored memory scores ~1
    vec = emb.embed_documents([FACTS[2][0]])[0]
    assert client.query_by_vector(vec, top_k=1)[0].score > 0.99


async def test_langchain_async_retriever(client: EngramClient) -> None:
    store = lc.EngramVectorStore(client)
    await store.aadd_texts([t for t, _m in FACTS], [m for _t, m in FACTS])
    docs = await store.as_retriever(search_kwargs={"k": 1}).ainvoke("cell energy organelle")
    assert docs[0].page_content == FACTS[1][0]


# --- LlamaIndex --------------------------------------------------------------------------


def test_llamaindex_index_build_and_retrieve(client: EngramClient, sdk_embedder: Embedder) -> None:
    store = li.EngramVectorStore(client=client)
    assert isinstance(store, BasePydanticVectorStore) and store.stores_text
    embed = li.EngramEmbedding(sdk_embedder)
    docs = [LIDocument(text=t, metadata=m, doc_id=f"doc-{i}") for i, (t, m) in enumerate(FACTS)]
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed,
    )
    hits = index.as_retriever(similarity_top_k=2).retrieve("Which city is France's capital?")
    assert isinstance(hits[0], NodeWithScore)
    assert hits[0].node.get_content() == FACTS[0][0] and hits[0].score > hits[1].score
    assert hits[0].node.ref_doc_id == "doc-0"
    assert hits[0].node.metadata["topic"] == "geo"

    # a fresh index over the same store (the usual way to reopen one), with filters
    reopened = VectorStoreIndex.from_vector_store(store, embed_model=embed)
    flt = MetadataFilters(filters=[MetadataFilter(key="topic", value="bio")])
    bio = reopened.as_retriever(similarity_top_k=4, filters=flt).retrieve("mountains")
    assert {h.node.get_content() for h in bio} == {FACTS[1][0], FACTS[3][0]}
    bad = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="x", operator=FilterOperator.NE)]
    )
    with pytest.raises(InputError):
        reopened.as_retriever(filters=bad).retrieve("anything")


def test_llamaindex_nodes_and_query_by_embedding(
    client: EngramClient, sdk_embedder: Embedder
) -> None:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    store = li.EngramVectorStore(client=client)
    embed = li.EngramEmbedding(sdk_embedder)
    nodes = [TextNode(text=t, metadata=m) for t, m in FACTS]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    assert index.vector_store is store
    q = VectorStoreQuery(query_embedding=embed.get_query_embedding("cells"), similarity_top_k=1)
    res = store.query(q)
    assert res.nodes is not None and res.nodes[0].get_content() == FACTS[1][0]
    assert res.ids == [res.nodes[0].node_id] and res.ids[0].startswith("v1::")
