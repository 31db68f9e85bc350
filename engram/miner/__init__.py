"""The miner: embedder, embed workers, store projection (USearch + metadata), axon.

Modules: ``embedder`` (fastembed, offline model), ``limits`` (request limits, pure),
``store`` (index + metadata state), ``projection`` (MEMORY → store runner), ``workers``
(IngestRequested → Embedded), ``axon`` (HTTP), ``node`` (one miner process).
"""
