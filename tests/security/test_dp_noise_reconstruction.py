"""The noise-reconstruction attack: rebuild a client's released update from the configuration.

An attacker who holds ``config.json`` (shipped in every artifact; chosen by the coordinator in a
deployment) and the model a round started from reruns the client's training with every seed the
configuration implies. If the noise were seeded from the configuration, one rerun would match the
release bit for bit and the noise could be subtracted (membership and label inference follow).
With noise from OS entropy no rerun matches. The positive control runs the same attack on an
``--insecure-seeded-noise`` run, where it must succeed: the test can fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedready.client.app import _insecure_seed
from fedready.client.state import read_kept_reply
from fedready.client.training import train
from fedready.config import make_config
from fedready.federation import client_shard, task_of
from fedready.modelio import load_npz
from fedready.simulations.engine import simulate

pytestmark = pytest.mark.slow

OPTIONS = {"num_clients": 2, "rounds": 2, "partitioner": "iid", "seed": 7}


def _attack(run: Path, client: int = 0, server_round: int = 2) -> float:
    """Smallest max-abs distance between the release and any rerun under the seeds the config implies."""
    cfg = make_config(**json.loads((run / "config.json").read_text())["config"])
    start = load_npz((run / "checkpoints" / f"round-{server_round - 1:04d}.npz").read_bytes())
    folder = run.with_name(run.name + ".clients") / str(client)
    released, metrics = read_kept_reply(folder)
    shard = client_shard(cfg, client)
    candidates = {_insecure_seed(cfg.seed, client, server_round), cfg.seed, server_round, client, 0}
    best = math.inf
    for seed in candidates:
        model = task_of(cfg).model()
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in start.items()})
        train(model, shard.x_train, shard.y_train, epochs=cfg.local_epochs, batch_size=cfg.batch_size,
              lr=cfg.lr_at(server_round), momentum=cfg.momentum, seed=seed,
              noise_multiplier=metrics["noise-multiplier"], max_grad_norm=cfg.max_grad_norm,
              max_steps=int(metrics["steps"]), released_rows=int(metrics["num-examples"]))  # fmt: skip
        rerun = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        best = min(best, max(float(np.abs(rerun[k] - released[k]).max()) for k in released))
    return best


@pytest.fixture(scope="module")
def runs(tmp_path_factory, binary_task):
    base = tmp_path_factory.mktemp("recon")
    task = {k: str(binary_task[k]) for k in ("data", "schema", "test")}  # a small synthetic table
    out = {}
    for name, extra in (("secret-a", {}), ("secret-b", {}), ("seeded", {"insecure_seeded_noise": True})):
        out[name] = simulate(make_config(**OPTIONS, **task, model="logreg", batch_size=64, **extra), base / name)
    return out


def test_noise_reconstruction_attack_from_the_configuration_fails(runs):
    distance = _attack(Path(runs["secret-a"]["run_dir"]))
    assert distance > 1e-3  # no seed the configuration implies reproduces the released update


def test_the_same_attack_succeeds_on_an_insecure_seeded_run(runs):
    assert _attack(Path(runs["seeded"]["run_dir"])) < 1e-6  # to float rounding: the noise is known
    assert runs["seeded"]["private"] is False
    assert runs["seeded"]["caveats"][0].startswith("NOT PRIVATE")


def test_two_dp_runs_with_the_same_seed_differ(runs):
    assert runs["secret-a"]["model_digest"] != runs["secret-b"]["model_digest"]
    assert runs["secret-a"]["private"] is True and runs["secret-a"]["caveats"] == []
