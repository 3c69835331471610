"""``fedready audit-privacy``: canaries through fedready's own mechanisms, and the command end to end.

The fast tests drive the audit's pieces in this process: canary clients through the real
client-level DP strategy and Flower's FedAvg, gradient canaries through real local training. The
slow ones run the command through Flower's simulation engine on a synthetic task, both levels in
one run wherever they can share it: the sanity checks without DP, correct configurations in three
seeds, and a deliberately under-noised client-level mechanism that the audit must catch (exit 1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from fedready import constants as K
from fedready.cli import app
from fedready.client.training import train
from fedready.privacy.accounting import compose_epsilon
from fedready.privacy.auditing import AUDIT_FILE, inclusion_bits, isotropic_directions, read_audits
from fedready.server.client_dp import ClientLevelDP
from fedready.simulations.audit import CanaryClients, GradientCanaries, _gradient_scores, accounted_epsilon

SHAPES = {"0.weight": (20, 20), "0.bias": (20,), "1.weight": (2, 20)}  # a small model: 460 parameters
DIM = 460


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # what a ServerApp's process has set before it builds messages
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value, raising=False)


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _reply(arrays: dict[str, np.ndarray], weight: float, pid: int) -> Message:
    content = RecordDict(
        {
            K.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            K.METRICS: MetricRecord({K.NUM_EXAMPLES: weight, K.UNIFORM_WEIGHT: 1, K.PARTITION_ID: pid}),
        }
    )
    return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)  # fmt: skip


def _rounds(strategy, audited: CanaryClients, rng: np.random.Generator, rounds: int, real: int) -> None:
    """Run ``rounds`` aggregations with ``real`` random client updates of various norms (some far past the clip)."""
    current = _model(rng)
    for r in range(1, rounds + 1):
        arrays = ArrayRecord({k: Array(v) for k, v in current.items()})
        audited.current = arrays
        if isinstance(strategy, ClientLevelDP):
            strategy.current = arrays
        else:
            strategy.current_arrays = arrays
        replies = [_reply({k: v + rng.normal(0, 0.3 * (i + 1), v.shape).astype(np.float32) for k, v in current.items()},
                          weight=float(10 * (i + 1)), pid=i) for i in range(real)]  # fmt: skip
        out, _ = audited.aggregate_train(r, replies)
        current = {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("kind", ["client-level-dp", "fedavg"])
def test_the_other_clients_contribution_is_removed_exactly(kind):
    # With no noise, what is left of a round is the canaries alone: 1 for a canary that took part, 0 otherwise,
    # whatever the real clients sent (clipped under client-level DP, example-weighted under FedAvg).
    rng = np.random.default_rng(0)
    k, rate = 40, 0.5
    if kind == "client-level-dp":
        strategy = ClientLevelDP(FedAvg(), noise_multiplier=1.0, clipping_norm=0.7, sample_rate=rate, population=10)
        strategy.noise_std = lambda: 0.0
    else:
        strategy = FedAvg(weighted_by_key=K.NUM_EXAMPLES, arrayrecord_key=K.ARRAYS)
    directions, bits = isotropic_directions(k, DIM, rng=rng, orthogonal=True), inclusion_bits(k, rng=rng)
    audited = CanaryClients(strategy, directions=directions, included=bits, sample_rate=rate, norm=0.7, rng=rng)
    _rounds(strategy, audited, rng, rounds=6, real=4)
    y = np.stack(audited.projections, axis=1)
    assert np.allclose(y[~bits], 0.0, atol=1e-4)
    assert np.allclose(np.round(y[bits]), y[bits], atol=1e-4) and set(np.unique(np.round(y[bits]))) <= {0.0, 1.0}
    assert np.round(y[bits]).sum() == audited.participations.sum() > 0
    assert (audited.participations[~bits] == 0).all()


def test_correct_noise_stays_below_the_accounted_epsilon_and_none_does_not():
    rng = np.random.default_rng(1)
    k, rate, rounds, z = 400, 0.2, 10, 2.0
    accounted = compose_epsilon([(z, rate, rounds)], delta=1e-5)
    bounds = {}
    for fraction in (1.0, 0.0):
        strategy = ClientLevelDP(FedAvg(), noise_multiplier=z, clipping_norm=1.0, sample_rate=rate, population=10)
        std = strategy.noise_std()
        strategy.noise_std = lambda f=fraction, s=std: f * s  # the ledger still charges z
        directions = isotropic_directions(k, DIM, rng=rng, orthogonal=True)  # as the audit draws them (k <= d)
        bits = inclusion_bits(k, rng=rng)
        audited = CanaryClients(strategy, directions=directions, included=bits, sample_rate=rate, norm=1.0, rng=rng)
        _rounds(strategy, audited, rng, rounds=rounds, real=2)
        _, primary, fields = audited.score(delta=1e-5, confidence=0.95)
        assert fields["score_noise_multiplier"] == z  # the score uses the claimed multiplier, not what was drawn
        bounds[fraction] = primary.bound.epsilon
    assert bounds[1.0] < accounted < bounds[0.0]


def test_gradient_canaries_are_what_dp_sgd_added(tmp_path):
    # DP-SGD at noise 0 (and plain SGD): an inserted canary adds exactly one clip-norm unit in each step it is
    # sampled, an excluded one never; the score of an excluded canary is the lowest possible.
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((200, 4)).astype(np.float32), rng.integers(0, 2, 200)
    k = 30
    bits, owners = inclusion_bits(k, rng=rng), np.zeros(k, dtype=np.int64)
    for noise in (0.0, None):
        folder = tmp_path / f"noise-{noise}"
        hooks = GradientCanaries(folder, owners=owners, included=bits, seeds={0: 7})
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        train(model, x, y, epochs=1, batch_size=50, lr=0.1, momentum=0.0, seed=None if noise is not None else 3,
              noise_multiplier=noise, max_grad_norm=0.5, max_steps=12, optimizer_hook=hooks(0, 1),
              released_rows=len(y))  # fmt: skip
        with np.load(folder / "client-00000-round-00001.npz") as d:
            proj, rate = d["projections"], float(d["sample_rate"])
        assert proj.shape == (12, k) and rate == pytest.approx(0.25)
        assert np.allclose(proj[:, ~bits], 0.0, atol=1e-4)
        assert set(np.unique(np.round(proj[:, bits], 3))) <= {0.0, 1.0} and proj[:, bits].sum() > 0
        scores, steps = _gradient_scores(hooks, k)
        assert steps == 12 and scores[~bits].max() < scores[bits].max()
    assert hooks(1, 1) is None  # a client that owns no canary trains as usual


class _UnderNoised:
    """A test-only optimiser hook: the audit's gradient canaries, then Opacus's noise cut to ``fraction``."""

    def __init__(self, inner, fraction: float) -> None:
        self.inner, self.fraction = inner, fraction

    def attach(self, optimizer, **kwargs) -> None:
        self.inner.attach(optimizer, **kwargs)  # records the claimed multiplier for the score
        optimizer.noise_multiplier *= self.fraction  # the bug under test: the ledger still charges the full z

    def close(self) -> None:
        self.inner.close()


def test_sample_level_correct_noise_stays_below_and_a_tenth_of_it_is_caught(tmp_path):
    # DP-SGD (Opacus) at z = 2, q = 0.05, 60 steps: accounted 0.96. 500 gradient canaries in one client's steps.
    from fedready.privacy.auditing import canary_audit

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((400, 30)).astype(np.float32), rng.integers(0, 2, 400)
    k, z, steps = 500, 2.0, 60
    accounted = compose_epsilon([(z, 20 / 400, steps)], delta=1e-5)
    bounds = {}
    for fraction in (1.0, 0.1):
        bits, owners = inclusion_bits(k, rng=rng), np.zeros(k, dtype=np.int64)
        hooks = GradientCanaries(tmp_path / f"f{fraction}", owners=owners, included=bits, seeds={0: 11})
        model = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))  # 530
        hook = hooks(0, 1) if fraction == 1.0 else _UnderNoised(hooks(0, 1), fraction)
        train(model, x, y, epochs=1, batch_size=20, lr=0.1, momentum=0.0, seed=None, noise_multiplier=z,
              max_grad_norm=1.0, max_steps=steps, optimizer_hook=hook, released_rows=len(y))  # fmt: skip
        scores, scored = _gradient_scores(hooks, k)
        assert scored == steps
        bounds[fraction] = canary_audit(scores, bits, delta=1e-5).bound.epsilon
    assert bounds[1.0] < accounted < bounds[0.1]


def test_the_audit_compares_with_the_release_it_audits():
    from fedready.config import make_config
    from fedready.privacy.ledger import Ledger

    ledger = Ledger(run_id="r", delta=1e-5, target_epsilon=1.0, accountant="rdp")
    for lv, z, q, n in (("count", 20.0, 1.0, 1), ("sample", 1.2, 0.3, 30), ("query", 12.0, 1.0, 1)):
        ledger.charge(round=1, client="0", level=lv, noise_multiplier=z, sample_rate=q, steps=n, delta=1e-5)
    ledger.charge(round=1, client="*", level="client", noise_multiplier=2.0, sample_rate=0.1, steps=1, delta=1e-5)
    sample = accounted_epsilon(ledger, make_config(), "sample")
    # the model is made from the count and the training rounds; the query comes after it (but is claimed)
    assert sample["epsilon"] == pytest.approx(ledger.client_epsilon(("count", "sample"))["0"])
    assert sample["epsilon"] < sample["claimed"] == pytest.approx(ledger.epsilon)
    client = accounted_epsilon(ledger, make_config(client_dp="server-fixed", client_noise_multiplier=2.0), "client")
    assert client["epsilon"] == pytest.approx(ledger.client_level_epsilon)
    assert accounted_epsilon(ledger, make_config(dp=False), "sample")["epsilon"] is None
    assert accounted_epsilon(ledger, make_config(), "client")["epsilon"] is None


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--level", "record"], "level"),
        (["--secagg"], "secagg"),
        (["--aggregator", "median", "--no-dp"], "aggregator"),
        (["--canaries", "3"], "canaries"),
        (["--confidence", "1.5"], "confidence"),
        (["--level", "scale", "--no-dp"], "dp"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(args, field, tmp_path):
    result = CliRunner().invoke(app, ["audit-privacy", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"{field}:" in result.output
    assert not list(tmp_path.glob("audit-*/config.json"))


# --------------------------------------------------------------------------------------------
# End to end (Flower's simulation engine)
# --------------------------------------------------------------------------------------------

# mlp-wide: 1,026 parameters on the synthetic task, room for 1000 orthogonal canary directions
SMALL = ["--partitioner", "iid", "--local-steps", "2", "--batch-size", "64", "--model", "mlp-wide"]
UNDER_NOISED = (
    "import sys; from fedready.server.client_dp import ClientLevelDP; f = float(sys.argv.pop(1)); "
    "o = ClientLevelDP.noise_std; ClientLevelDP.noise_std = lambda self: f * o(self); "
    "from fedready.cli import main; sys.argv[0] = 'fedready'; main()"
)


def _fedready(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    tmp = tempfile.mkdtemp(prefix="fr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, *(prefix or ["-m", "fedready.cli"]), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    finally:
        subprocess.run(["pkill", "-9", "-f", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _task(task: dict) -> list[str]:
    return ["--data", str(task["data"]), "--schema", str(task["schema"]), "--test", str(task["test"])]


def _audit(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_run_folder_is_audited_with_its_own_configuration_only(tmp_path):
    run = tmp_path / "plain"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"rounds": 2}, "launched_by": "fedready simulate"}))
    result = CliRunner().invoke(app, ["audit-privacy", "--run", str(run), "--rounds", "2"])
    assert result.exit_code == 2 and "pass options without --run" in result.output
    assert not list(tmp_path.glob("audit-*"))


# One run per configuration, shared by the tests that read it (module scope): the whole module's
# slow part is five simulations of a few rounds (about 2.5 minutes on 2 idle cores).


@pytest.fixture(scope="module")
def sanity(binary_task, tmp_path_factory):
    """Both levels audited in one re-run of a recorded non-private configuration.

    The recorded run is only its records (``config.json`` as ``fedready simulate`` writes it, and a
    summary): the audit reads nothing else, and a plain simulation would add a minute to the suite.
    """
    from fedready.config import make_config
    from fedready.federation import record_run

    out = tmp_path_factory.mktemp("audit-sanity")
    cfg = make_config(data=str(binary_task["data"]), schema=str(binary_task["schema"]), test=str(binary_task["test"]),
                      partitioner="iid", local_steps=2, batch_size=64, model="mlp-wide", num_clients=4, rounds=3,
                      dp=False)  # fmt: skip
    record_run(cfg, out / "plain", simulated=True)
    (out / "plain" / "summary.json").write_text(json.dumps({"status": "completed", "seconds": 12.5}))
    proc = _fedready("audit-privacy", "--run", str(out / "plain"), "--level", "both", "--json")
    return out, out / "plain", _audit(proc), proc


@pytest.mark.slow
def test_sanity_without_dp_the_client_level_bound_is_large(sanity):
    # Without any DP the mechanism shows every canary client: the bound reaches the one-run cap for 1000
    # canaries (about 4.4), at least 3 at delta 1e-5 and 95% confidence.
    _, _, audits, proc = sanity
    client = audits["client"]
    assert proc.returncode == 0  # nothing accounted, so nothing to exceed
    assert client["epsilon_lower_bound"] >= 3.0 and client["delta"] == 1e-5 and client["confidence"] == 0.95
    assert client["accounted"]["epsilon"] is None and not client["exceeds_accounted"]


@pytest.mark.slow
def test_sanity_without_dp_the_sample_level_bound_is_clearly_positive(sanity):
    # Gradient canaries in plain SGD steps: nothing hides them either (black-box canary rows gave 0 here)
    sample = sanity[2]["sample"]
    assert sample["epsilon_lower_bound"] >= 3.0 and sample["steps_scored"] > 0
    assert sample["accounted"]["epsilon"] is None and not sample["exceeds_accounted"]


@pytest.mark.slow
def test_the_audited_run_records_both_levels_and_the_cost(sanity):
    out, run, audits, _ = sanity
    recorded = read_audits(run)  # both levels, each written whole into the audited run
    assert set(recorded) == {"client", "sample"} and recorded == audits
    doc = json.loads((run / AUDIT_FILE).read_text())
    for audit in doc["audits"].values():
        assert len(audit["bits"]) == len(audit["scores"]) == audit["canaries"] == 1000
        assert sum(audit["bits"]) == audit["inserted"] and audit["seed_source"] == "os-entropy"
        assert Path(audit["audit_run"]).parent == out and audit["audited_run"] == str(run)
        assert audit["cost"]["levels_in_the_run"] == ["client", "sample"]  # one second run for both
        assert audit["cost"]["audit_seconds"] > 0 and audit["cost"]["plain_run_seconds"] == 12.5
    assert audits["client"]["audit_run"] == audits["sample"]["audit_run"]


CLIENT_DP = ["--clients", "20", "--fraction-train", "0.1", "--rounds", "6", "--min-client-rows", "10",
             "--client-dp", "server-fixed", "--client-noise-multiplier", "2"]  # fmt: skip


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def correct(request, binary_task, tmp_path_factory):
    """The default (sample-level) DP with client-level DP on top, both levels audited in one run per seed."""
    out = tmp_path_factory.mktemp(f"audit-correct-{request.param}")
    return _audit(_fedready("audit-privacy", *_task(binary_task), *SMALL, *CLIENT_DP, "--level", "both",
                            "--seed", str(request.param), "--out", str(out), "--json"))  # fmt: skip


@pytest.mark.slow
def test_correct_configurations_stay_below_the_accounted_epsilon(correct):
    client, sample = correct["client"], correct["sample"]
    assert client["accounted"]["epsilon"] == pytest.approx(compose_epsilon([(2.0, 0.1, 6)], delta=1e-5))
    assert client["epsilon_lower_bound"] <= client["accounted"]["epsilon"] and not client["exceeds_accounted"]
    # the DP-SGD model's epsilon, or the client level's where smaller (a row is part of its client)
    assert 0 < sample["accounted"]["epsilon"] <= client["accounted"]["epsilon"] + 1e-9
    assert sample["steps_scored"] > 0 and sample["score"].startswith("per-step residual projection")
    assert sample["epsilon_lower_bound"] <= sample["accounted"]["epsilon"] and not sample["exceeds_accounted"]


@pytest.mark.slow
def test_client_level_under_noising_is_caught(binary_task, tmp_path):
    # A tenth of the noise the ledger charges (z = 2: accounted epsilon 0.94 over 10 rounds at q = 0.1):
    # the audit's bound exceeds it, it says so and exits 1.
    proc = _fedready("0.1", "audit-privacy", *_task(binary_task), *SMALL, "--clients", "20", "--fraction-train", "0.1",
                     "--rounds", "10", "--min-client-rows", "10", "--no-dp", "--client-dp", "server-fixed",
                     "--client-noise-multiplier", "2", "--out", str(tmp_path), "--name", "buggy",
                     prefix=["-c", UNDER_NOISED])  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "exceeds the accounted epsilon" in proc.stderr and "a bug" in proc.stderr
    audit = read_audits(tmp_path / "buggy")["client"]
    assert audit["exceeds_accounted"] and audit["epsilon_lower_bound"] > audit["accounted"]["epsilon"]
    assert audit["accounted"]["epsilon"] == pytest.approx(compose_epsilon([(2.0, 0.1, 10)], delta=1e-5))


# --------------------------------------------------------------------------------------------
# The scale level: membership from the update norms (issue 21, finding 2)
# --------------------------------------------------------------------------------------------


def _scale_audit(tmp_path: Path) -> tuple[int, str, dict]:
    result = CliRunner().invoke(app, ["audit-privacy", "--level", "scale", "--canaries", "80", "--confidence", "0.99",
                                      "--out", str(tmp_path), "--name", "scale"])  # fmt: skip
    return result.exit_code, result.output, read_audits(tmp_path / "scale")["scale"]


def test_scale_audit_finds_no_row_count_in_the_updates_scale(tmp_path):
    code, output, audit = _scale_audit(tmp_path)
    assert code == 0, output
    assert not audit["exceeds_accounted"] and audit["epsilon_lower_bound"] <= audit["accounted"]["epsilon"]
    assert audit["rounds_scored"] == 3 and len(audit["scores"]) == 80 and audit["accounted"]["epsilon"] > 0


def test_scale_audit_catches_a_divisor_computed_from_the_exact_row_count(tmp_path, monkeypatch):
    # the bug of finding 2 put back on purpose: the sampler and the update's divisor from len(y) (Opacus's default)
    import fedready.client.app as client_app

    real = client_app.train

    def exact_n(model, x, y, **kw):
        if kw.get("released_rows") is not None:
            kw["released_rows"] = len(y)
        return real(model, x, y, **kw)

    monkeypatch.setattr(client_app, "train", exact_n)
    code, output, audit = _scale_audit(tmp_path)
    assert code == 1 and "exceeds the accounted epsilon" in output
    assert audit["exceeds_accounted"] and audit["epsilon_lower_bound"] > audit["accounted"]["epsilon"]
