"""Framework adapters over the SDK: :mod:`engram.adapters.langchain` (a LangChain
``VectorStore``; extra ``langchain``) and :mod:`engram.adapters.llamaindex` (a LlamaIndex
``BasePydanticVectorStore``; extra ``llamaindex``). Each imports its framework, so import
the module you use."""
