"""Engram's exception tree (one root: :class:`streams.errors.EngramError`).

::

    EngramError
    ├── InputError (ValueError)        the caller's input is wrong: an HTTP 4xx, a dead letter
    │   ├── ConfigError                 a setting (engram.config)
    │   ├── CoreError                   consensus bytes (engram.core.errors)
    │   └── EventDecodeError            bytes that are not an event (streams.events)
    └── Unavailable                     a dependency failed; retrying may help (HTTP 503)
        ├── PublishError                JetStream did not accept an event (streams.publisher)
        └── NatsServerError             the embedded nats-server (engram.natsd)

Modules define their own subclasses next to their code and derive them from these.
"""

from streams.errors import MAX_ECHO, EngramError, InputError, Unavailable, short

__all__ = ["MAX_ECHO", "EngramError", "InputError", "Unavailable", "short"]
