"""A record of everything a client sends: the keys of every outgoing message, for its auditors.

``wire_log_mod`` sits outermost in a ClientApp's mod list, so it sees each reply exactly as it
leaves (after clipping and, under SecAgg+, after masking). When the SuperNode's node config
names a ``wire-log`` file (``fedready client --wire-log FILE``), or a simulation sets the run
config key ``fedready.wire-log``, it appends one JSON line per reply: the message type and,
per record, its kind and keys (never a value). The README's "What leaves a client" table
lists every key with its privacy status, and a test fails on any key it does not list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedready import constants as K

__all__ = ["WIRE_LOG_RUN_CONFIG", "describe_message", "make_wire_log_mod"]

WIRE_LOG_RUN_CONFIG = "fedready.wire-log"


def describe_message(msg: Message) -> dict:
    """Message type and each record's kind and sorted keys (no values)."""
    records = {}
    for name, record in msg.content.items():
        records[name] = {"kind": type(record).__name__, "keys": sorted(str(k) for k in record.keys())}
    return {"message_type": msg.metadata.message_type, "error": msg.has_error(), "records": records}


def make_wire_log_mod(overrides: dict | None = None):
    """The mod, reading the wire log's path from the node config, ``overrides`` or the run config."""
    fixed = dict(overrides or {})

    def wire_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        path = (context.node_config.get(K.NODE_WIRE_LOG) or fixed.get(WIRE_LOG_RUN_CONFIG)
                or context.run_config.get(WIRE_LOG_RUN_CONFIG))  # fmt: skip
        if path:
            _append(Path(str(path)), context, reply)
        return reply

    return wire_log_mod


def _append(target: Path, context: Context, reply: Message) -> None:
    """Append one line describing ``reply`` (outermost mod: what actually leaves)."""
    line = json.dumps({"partition": str(context.node_config.get(K.PARTITION_ID, "?")), **describe_message(reply)},
                      sort_keys=True)  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    # one write per line, append mode: concurrent clients (Ray workers) do not interleave lines
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
