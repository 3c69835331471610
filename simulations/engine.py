"""The one place that starts Flower's simulation engine for fedready.

``flwr.simulation.run_simulation`` is deprecated in Flower 1.42 in favour of
``flwr run``; keeping the call here means one edit when it goes. The same
ServerApp and ClientApp also run under ``flwr run .`` (see pyproject.toml).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedready import constants as K
from fedready import profiling
from fedready.config import SimulationConfig, make_config
from fedready.constants import LEDGER_FILE
from fedready.errors import ConfigError
from fedready.federation import CONFIG_FILE, partition_sizes, record_run, task_of
from fedready.models import check_model

__all__ = ["check_config", "check_ray_temp_dir", "federated_evaluate", "load_run_config", "simulate"]

# A local Ray instance puts Unix sockets at <temp>/ray/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store;
# a Unix socket path holds at most 107 bytes. Longer, and Ray never comes up: the run would wait forever.
_RAY_SOCKET_SUFFIX = len("/ray/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
_SOCKET_PATH_MAX = 107


def check_config(cfg: SimulationConfig) -> list[str]:
    """Check what depends on the data and the model: the task loads, the model builds (and Opacus can
    train it), the partitioning is possible and delta < 1/n.

    Returns
    -------
    list of str
        One line per thing the user should know (rows left out, a model Opacus fixed).

    Raises
    ------
    ConfigError
        Naming the field (``data``, ``model``, ``num-clients``, ``alpha``, ``delta``, ...) and the fix.
    """
    task = task_of(cfg)
    notes = list(task.notes)
    note = check_model(cfg.model, task.in_features, task.num_classes)
    notes += [note] if note else []
    n_max = max(partition_sizes(cfg))  # raises for an impossible partitioning
    if cfg.dp and cfg.delta >= 1.0 / n_max:
        raise ConfigError("delta", f"must be below 1/n = {1.0 / n_max:.3g} (the largest client holds "
                                   f"{n_max} rows); pass e.g. --delta 1e-5")  # fmt: skip
    return notes


def load_run_config(run_dir: Path) -> SimulationConfig:
    """Read the configuration a run was started with."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.exists():
        raise ConfigError("resume", f"{run_dir} holds no {CONFIG_FILE}; pass the folder of a fedready run")
    return make_config(**json.loads(p.read_text())["config"])


def simulate(
    cfg: SimulationConfig,
    run_dir: Path,
    *,
    on_round: Callable[[Any], None] | None = None,
    ray_address: str | None = None,
    wire_log: Path | None = None,
    strategy_hook: Callable[[Any], Any] | None = None,
    optimizer_hooks: Callable[[int, int], Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a simulated federation and return its summary.

    Parameters
    ----------
    cfg : SimulationConfig
        The run's configuration.
    run_dir : Path
        Output folder; if it holds a checkpoint the run resumes from it.
    on_round : callable, optional
        Called with each round's :class:`~server.app.RoundReport`.
    ray_address : str, optional
        Address of an existing Ray cluster (``ray start --head``); default: a
        local Ray instance started for this run.
    wire_log : Path, optional
        Every client appends the keys of each message it sends to this file
        (:mod:`fedready.client.wire`).
    strategy_hook, optimizer_hooks : callable, optional
        Simulation-only hooks of the privacy audit (:mod:`fedready.simulations.audit`): wrap the
        server's strategy (:func:`~fedready.server.app.run_rounds`) and see each simulated client's
        optimisation steps (:func:`~fedready.client.app.make_client_app`).
    """
    from fedready.client.app import make_client_app
    from fedready.server.app import make_server_app

    with profiling.span("server", "configuration check, data load"):
        check_config(cfg)
    check_ray_temp_dir(ray_address)
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    record_run(cfg, run_dir, simulated=True)  # config.json and schema.json: every later step reads the task from them

    overrides = {**cfg.to_run_config(), K.RUN_DIR: str(run_dir), K.SIMULATION: True}
    if wire_log is not None:
        from fedready.client.wire import WIRE_LOG_RUN_CONFIG

        overrides[WIRE_LOG_RUN_CONFIG] = str(Path(wire_log).resolve())
    result: dict[str, Any] = {}
    server_app = make_server_app(overrides, on_round=on_round, on_summary=result.update, strategy_hook=strategy_hook)
    if cfg.secagg:  # SecAgg+ speaks the legacy NumPyClient protocol on the client side
        from fedready.client.secagg import make_secagg_client_app

        if optimizer_hooks is not None:
            raise RuntimeError("optimizer_hooks apply to the message-API ClientApp, not the SecAgg+ client")

        client_app = make_secagg_client_app(overrides, client_clipping=cfg.client_dp == "client-fixed")
    else:
        client_app = make_client_app(overrides, optimizer_hooks=optimizer_hooks)
    profiling.mark("server", "Flower simulation starts (seconds after fedready's import)")
    with profiling.span("server", "Flower simulation (Ray start-up, rounds, shutdown)"):
        _run(server_app, client_app, cfg.num_clients, ray_address)
    if not result:
        raise RuntimeError(f"the simulation ended without a summary; see the logs in {run_dir}")
    if cfg.dp:
        result = _charge_unreported(cfg, run_dir, result)
    return result


def _charge_unreported(cfg: SimulationConfig, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Charge releases no reply reported (a straggler still training when the server last heard from it).

    In a simulation every client's own record is at hand (``<run>.clients/<id>/state.npz``), so
    the run's ledger ends with every release any client made, late ones included.
    """
    from fedready.client.state import client_state_dir, read_state
    from fedready.privacy.ledger import Ledger
    from fedready.server.app import charge_history, refresh_privacy

    path = run_dir / LEDGER_FILE
    if not path.exists():
        return summary
    ledger = Ledger.load(path)
    before = len(ledger.entries)
    last = max((e.round for e in ledger.entries), default=0)
    for pid in range(cfg.num_clients):
        folder = client_state_dir(run_dir, pid)
        state = read_state(folder) if folder is not None else None
        if state is None:
            continue
        charge_history(ledger, str(pid), state.wire_history(), delta=cfg.delta, current_round=last + 1)
    if len(ledger.entries) == before:
        return summary
    return {**summary, **refresh_privacy(run_dir, cfg, ledger, cross_check=True)}  # after the run: check again


def federated_evaluate(run_dir: Path, *, ray_address: str | None = None) -> dict[str, Any]:
    """Ask every client of a finished run for group confusion counts on its final model.

    Starts the same ServerApp and ClientApp as :func:`simulate`, with the run config
    key ``fedready.mode = "evaluate"``: the server sends one ``evaluate`` message per
    client and sums the replies (:mod:`fedready.server.queries`). Always uses
    the plain message path, also for runs trained under SecAgg+ (only counts travel).
    """
    from fedready.client.app import make_client_app
    from fedready.server.app import make_server_app

    check_ray_temp_dir(ray_address)
    run_dir = Path(run_dir).resolve()
    cfg = load_run_config(run_dir)
    overrides = {**cfg.to_run_config(), K.RUN_DIR: str(run_dir), K.MODE: K.MODE_EVALUATE}
    result: dict[str, Any] = {}
    server_app = make_server_app(overrides, on_summary=result.update)
    _run(server_app, make_client_app(overrides), cfg.num_clients, ray_address)
    if not result:
        raise RuntimeError(f"the federated evaluation ended without a result; see the logs in {run_dir}")
    return result


def check_ray_temp_dir(ray_address: str | None) -> None:
    """Refuse a temp folder whose path leaves no room for a local Ray instance's socket paths.

    Ray reads ``RAY_TMPDIR``, then ``TMPDIR``, then uses ``/tmp``. An existing cluster (``ray_address``)
    keeps its own folder, so it is not checked.

    Raises
    ------
    ConfigError
        On field ``TMPDIR``, with the length and the fix.
    """
    if ray_address:
        return
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    length = len(os.fsencode(os.path.abspath(temp))) + _RAY_SOCKET_SUFFIX
    if length > _SOCKET_PATH_MAX:
        raise ConfigError(
            "TMPDIR",
            f"Ray's socket paths under '{temp}' would be {length} bytes, over the {_SOCKET_PATH_MAX}-byte limit "
            f"of a Unix socket; set TMPDIR (or RAY_TMPDIR) to a shorter folder, e.g. TMPDIR=/tmp",
        )


def _run(server_app: Any, client_app: Any, num_clients: int, ray_address: str | None) -> None:
    from flwr.simulation import run_simulation  # heavy import, deferred for fast CLI errors

    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
    if ray_address:
        init_args["address"] = ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args}
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)  # known notices (run_simulation deprecation, no fed-eval)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                       backend_config=backend_config)  # fmt: skip
