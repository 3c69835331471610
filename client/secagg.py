"""The client half of secure aggregation: a Flower NumPyClient behind ``secaggplus_mod``.

In Flower 1.42 SecAgg+ runs through the legacy ``DefaultWorkflow`` +
``SecAggPlusWorkflow`` path, which speaks the NumPyClient protocol; this module
adapts fedready's local training (:func:`fedready.client.app.local_update`, the
same code the message-API ClientApp runs) to it.

Notes
-----
Mod order matters: ``secaggplus_mod`` comes first and ``fixedclipping_mod`` after
it (closer to the app), so the update is clipped *before* it is masked. The
server only ever receives masked vectors and reconstructs their sum; it cannot
clip, validate or inspect any single update (Bell et al. 2020, "Secure
single-server aggregation with (poly)logarithmic overhead", CCS).

After training the server runs one more SecAgg+ round for the post-training query
(its fit config carries ``query-secagg``): the client answers with its summed counts
as one integer vector, noised with a distributed-noise share or its whole noise
(:func:`fedready.client.app.answer_through_secagg`); ``fixedclipping_mod`` passes that
round through (the counts are no model update).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Context, Message
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

from fedready import constants as K
from fedready.client.app import Decline, SecAggSetup, answer_through_secagg, local_update, resolve_config
from fedready.client.wire import ClientDeclined, make_wire_log_mod
from fedready.federation import task_of
from fedready.privacy.masks import full_entropy_masks

__all__ = ["full_entropy_secaggplus_mod", "make_secagg_client_app"]


class _SecAggClient(NumPyClient):
    def __init__(self, context: Context, overrides: dict[str, Any]) -> None:
        self.ctx = context
        self.overrides = overrides

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        torch.set_num_threads(1)
        cfg, run_dir = resolve_config(self.ctx, self.overrides)
        names = list(task_of(cfg).model().state_dict())
        global_arrays = dict(zip(names, parameters, strict=True))
        if int(config.get(K.QUERY_SECAGG, 0)):  # the post-training query round: counts, not a model update
            answer = answer_through_secagg(cfg, self.ctx, run_dir, config, global_arrays, _secagg_setup(self.ctx))
            if isinstance(answer, Decline):
                raise ClientDeclined(answer.reason, answer.detail)
            vector, metrics = answer
            return [vector], 1, _legacy_metrics(metrics)  # weight 1: SecAgg+ then sums the integers exactly
        out = local_update(cfg, self.ctx, run_dir, int(config[K.SERVER_ROUND]), global_arrays)
        if isinstance(out, Decline):
            # The legacy protocol has no decline; SecAgg+ treats the error as a dropout.
            raise ClientDeclined(out.reason, out.detail)  # the wire mod sends its reason code only
        arrays, metrics = out
        # Under client-level DP the mean must be unweighted; SecAgg+ weighs by this number (the noisy count).
        weight = 1 if cfg.client_dp != "off" else int(metrics[K.NUM_EXAMPLES])
        return [arrays[k] for k in names], weight, _legacy_metrics(metrics)


def _legacy_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Legacy metrics hold scalars only: the release history travels as one JSON string."""
    history = {k: metrics.pop(k) for k in list(metrics) if isinstance(metrics[k], list)}
    if history:
        metrics[K.HISTORY_JSON] = json.dumps(history, sort_keys=True)
    return metrics


def _secagg_setup(context: Context) -> SecAggSetup | None:
    """The SecAgg+ parameters of the current round, as ``secaggplus_mod`` stored them in the client's state."""
    record = context.state.config_records.get(RECORD_KEY_STATE)
    if record is None or "threshold" not in record:
        return None
    return SecAggSetup(
        threshold=int(record["threshold"]),
        clipping_range=float(record["clipping_range"]),
        quantization_range=int(record["target_range"]),
        max_weight=float(record["max_weight"]),
        mod_range=int(record["mod_range"]),
    )


def _training_only(mod: Mod) -> Mod:
    """``mod`` for training rounds; the query round's counts pass through untouched (they are no model update)."""

    def wrapped(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type == MessageType.TRAIN and _is_query_round(msg):
            return call_next(msg, context)
        return mod(msg, context, call_next)

    return wrapped


def _is_query_round(msg: Message) -> bool:
    config = msg.content.config_records.get("fitins.config")
    return config is not None and bool(int(config.get(K.QUERY_SECAGG, 0)))


def full_entropy_secaggplus_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` with masks drawn from the whole shared secret (:mod:`fedready.privacy.masks`).

    Notes
    -----
    It sits where ``secaggplus_mod`` would (after the wire log, before ``fixedclipping_mod``); the
    server unmasks with the same generator (:mod:`fedready.server.secagg`).
    """
    with full_entropy_masks():
        return secaggplus_mod(msg, context, call_next)


def make_secagg_client_app(overrides: dict[str, Any], *, client_clipping: bool) -> ClientApp:
    """A ClientApp for the SecAgg+ workflow (``client_clipping``: add Flower's fixedclipping_mod)."""

    def client_fn(context: Context) -> Client:
        return _SecAggClient(context, dict(overrides)).to_client()

    wire = make_wire_log_mod(overrides)  # outermost: it records the protocol messages as they leave
    secagg = full_entropy_secaggplus_mod
    mods = [wire, secagg, _training_only(fixedclipping_mod)] if client_clipping else [wire, secagg]
    return ClientApp(client_fn=client_fn, mods=mods)
