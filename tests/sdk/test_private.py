"""The SDK's delete / list / namespace calls and the adapters' delete against a real miner
(``DELETE /memory/{cid}``, ``GET /memories``, ``POST /namespaces``, grants).

Contract: ``DELETE /memory/{cid}`` → 200 ``{"cid", "deleted": true}``, 404 unknown or
invisible, 403 not deletable; ``GET /memories?namespace&limit&cursor&filter`` →
``{"memories": [{"cid", "namespace", "text", "metadata"}], "next_cursor"}``.
"""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from llama_index.core import Document as LIDocument
from llama_index.core import StorageContext, VectorStoreIndex

from engram.adapters import langchain as lc
from engram.adapters import llamaindex as li
from engram.miner.embedder import Embedder
from engram.sdk import AuthError, EngramClient, Forbidden, InvalidCID, MemoryPage, NotFound

from .conftest import CLIENT, STRANGER, caller


def _visible(call, text: str, ns: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return any(h.text == text for h in call("query", text, namespace=ns, include_text=True))
    except (AuthError, NotFound):
        return False


def test_delete_removes_a_memory(url: str, ns: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    cid = call("ingest", "to be forgotten")
    keep = call("ingest", "to be kept")
    assert call("delete", cid) is True
    with pytest.raises(NotFound):
        call("get", cid)
    assert [h.cid for h in call("query", "to be forgotten", top_k=5)] == [keep]
    with pytest.raises(NotFound):
        call("delete", cid)  # already gone
    with pytest.raises(InvalidCID):
        call("delete", "not-a-cid")


def test_delete_of_someone_elses_memory_is_refused(url: str, driver: str) -> None:
    mine = caller(driver, url, hotkey=CLIENT)
    cid = mine("ingest", "a public memory the stranger did not write")
    with pytest.raises(Forbidden):
        caller(driver, url, hotkey=STRANGER)("delete", cid)
    assert mine("get", cid).cid == cid


def test_list_pages_through_a_namespace_with_filters(url: str, ns: str, driver: str) -> None:
    call = caller(driver, url, hotkey=CLIENT, namespace=ns)
    cids = {call("ingest", f"note {i}", {"even": i % 2 == 0}) for i in range(5)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = call("list", limit=2, cursor=cursor)
        assert isinstance(page, MemoryPage) and len(page.memories) <= 2
        seen += [m.cid for m in page.memories]
        assert all(m.namespace == ns and m.text.startswith("note ") for m in page.memories)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert set(seen) == cids and len(seen) == 5 and pages == 3
    even = call("list", filter={"even": True})
    assert len(even.memories) == 3 and all(m.metadata["even"] for m in even.memories)


def test_private_namespace_grant_and_revoke(url: str, ns: str, driver: str) -> None:
    owner = caller(driver, url, hotkey=CLIENT, namespace=ns)
    stranger = caller(driver, url, hotkey=STRANGER, namespace=ns)
    owner("create_namespace", ns, "private")
    owner("ingest", "a private thought")
    assert _visible(owner, "a private thought", ns)
    assert not _visible(stranger, "a private thought", ns)
    owner("grant", ns, STRANGER.ss58_address, "read")
    assert _visible(stranger, "a private thought", ns)
    owner("revoke", ns, STRANGER.ss58_address)
    assert not _visible(stranger, "a private thought", ns)


def test_langchain_delete_goes_through_the_sdk(url: str, ns: str) -> None:
    store = lc.EngramVectorStore(EngramClient(url, hotkey=CLIENT, namespace=ns))
    ids = store.add_documents([Document(page_content="ephemeral"), Document(page_content="stays")])
    assert store.delete([ids[0]]) is True
    assert [d.page_content for d in store.get_by_ids(ids)] == ["stays"]


def test_llamaindex_delete_by_document(url: str, ns: str, sdk_embedder: Embedder) -> None:
    client = EngramClient(url, hotkey=CLIENT, namespace=ns)
    store = li.EngramVectorStore(client=client)
    index = VectorStoreIndex.from_documents(
        [LIDocument(text="first doc", doc_id="d1"), LIDocument(text="second doc", doc_id="d2")],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=li.EngramEmbedding(sdk_embedder),
    )
    index.delete_ref_doc("d1")
    left = client.list().memories
    assert [m.text for m in left] == ["second doc"]
    store.delete_nodes([left[0].cid])
    assert client.list().memories == []
