"""A record of everything a client sends: the keys of every outgoing message, for its auditors.

``wire_log_mod`` sits outermost in a ClientApp's mod list, so it sees each reply exactly as it
leaves (after clipping and, under SecAgg+, after masking). When the SuperNode's node config
names a ``wire-log`` file (``fedready client --wire-log FILE``), or a simulation sets the run
config key ``fedready.wire-log``, it appends one JSON line per reply: the message type and,
per record, its kind and keys (never a value). The "What leaves a client" table (docs/reference/privacy.md)
lists every key with its privacy status, and a test fails on any key it does not list.

A deployed client (its node config names its data) takes the path from its node config only: a
path in the coordinator's run config would let the coordinator append to any file on the
organisation's machine.

It is also where an exception of the ClientApp becomes the error reply: Flower would send
``str(exception)`` to the server (any text, a decline's detail, a library's message); this mod
sends one of the fixed codes of :func:`error_code` instead and logs the exception on the
client only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedready import constants as K

__all__ = ["ERROR_PREFIX", "WIRE_LOG_RUN_CONFIG", "ClientDeclined", "describe_message", "error_code",
           "make_wire_log_mod"]  # fmt: skip

log = logging.getLogger(__name__)

WIRE_LOG_RUN_CONFIG = "fedready.wire-log"
ERROR_PREFIX = "fedready:"  # every error reason a fedready client sends starts with it
ERROR_DROPPED = ERROR_PREFIX + "dropped-out"  # a simulated client that drops out mid-round
ERROR_CLIENT = ERROR_PREFIX + "client-error"  # anything else: the text stays in the client's own log


class ClientDeclined(RuntimeError):
    """A decline that must travel as an error (SecAgg+'s legacy protocol has no decline reply).

    Only ``reason`` (a reason code of :mod:`fedready.constants`) leaves the client; the detail is
    logged on the client.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"declined: {reason}: {detail}")
        self.reason, self.detail = reason, detail


_REASON_CODES = (K.BUDGET_EXHAUSTED, K.LOCAL_LIMIT, K.CONTRACT_VIOLATION, "delta-too-large", K.SECAGG_BELOW_T,
                 K.SECAGG_ENCODING)


def error_code(ex: BaseException) -> str:
    """The fixed text a client sends for ``ex``: never the exception's own message.

    ``fedready:declined:<reason code>`` for a decline, ``fedready:dropped-out`` for a simulated
    dropout, ``fedready:client-error`` for anything else.
    """
    from fedready.client.scenarios import ClientDropped

    if isinstance(ex, ClientDeclined) and ex.reason in _REASON_CODES:
        return f"{ERROR_PREFIX}declined:{ex.reason}"
    if isinstance(ex, ClientDropped):
        return ERROR_DROPPED
    return ERROR_CLIENT


def describe_message(msg: Message) -> dict:
    """Message type and each record's kind and sorted keys (no values); an error reply's code and reason keys."""
    records = {}
    if msg.has_error():
        records["error"] = {"kind": "Error", "keys": ["code", "reason"]}
    else:
        for name, record in msg.content.items():
            records[name] = {"kind": type(record).__name__, "keys": sorted(str(k) for k in record.keys())}
    return {"message_type": msg.metadata.message_type, "error": msg.has_error(), "records": records}


def _error_reply(msg: Message, ex: Exception) -> Message:
    code = error_code(ex)
    # the client's own log keeps what happened; the server gets the fixed code only
    log.error("the ClientApp raised %s (the server is sent only %r): %s", type(ex).__name__, code, ex)
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=code), reply_to=msg)


def make_wire_log_mod(overrides: dict | None = None):
    """The mod, reading the wire log's path from the node config, ``overrides`` or the run config.

    Notes
    -----
    It must be the first (outermost) mod: it records what actually leaves, and it turns an
    exception raised anywhere inside (an inner mod, the app) into a fixed-code error reply.
    """
    fixed = dict(overrides or {})

    def wire_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            reply = call_next(msg, context)
        except Exception as ex:  # noqa: BLE001 -- the boundary: Flower would send str(ex) to the server
            reply = _error_reply(msg, ex)
        path = context.node_config.get(K.NODE_WIRE_LOG)
        if not path and K.NODE_DATA not in context.node_config:  # a deployed client: its own node config only
            path = fixed.get(WIRE_LOG_RUN_CONFIG) or context.run_config.get(WIRE_LOG_RUN_CONFIG)
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
