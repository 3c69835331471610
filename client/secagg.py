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
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Context, Message

from fedready import constants as K
from fedready.client.app import Decline, local_update, resolve_config
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
        out = local_update(cfg, self.ctx, run_dir, int(config[K.SERVER_ROUND]), global_arrays)
        if isinstance(out, Decline):
            # The legacy protocol has no decline; SecAgg+ treats the error as a dropout.
            raise ClientDeclined(out.reason, out.detail)  # the wire mod sends its reason code only
        arrays, metrics = out
        # Under client-level DP the mean must be unweighted; SecAgg+ weighs by this number (the noisy count).
        weight = 1 if cfg.client_dp != "off" else int(metrics[K.NUM_EXAMPLES])
        # legacy metrics hold scalars only: the release history travels as one JSON string
        history = {k: metrics.pop(k) for k in list(metrics) if isinstance(metrics[k], list)}
        if history:
            metrics[K.HISTORY_JSON] = json.dumps(history, sort_keys=True)
        return [arrays[k] for k in names], weight, metrics


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
    mods = [wire, secagg, fixedclipping_mod] if client_clipping else [wire, secagg]
    return ClientApp(client_fn=client_fn, mods=mods)
