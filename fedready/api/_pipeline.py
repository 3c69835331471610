"""``fedready pipeline``: the whole job on a declared CSV (or the embedded data), end to end, resumable.

train (private federated run) -> evaluate (suites, gates, model card) -> compress (edge
variants, gated, smallest passing selected) -> sign (package + verify) -> publish (TUF
registry, canary then stable) -> device (edge update over HTTP, predict raw rows), then
``fedready edge serve`` serves the device's model. Every step is idempotent: running the
command again after a failure picks up where it stopped (the training resumes from its
checkpoint, finished steps are skipped or verified again).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["check_out", "default_out", "run_pipeline"]

DEVICE_ID = "device-0001"


@contextmanager
def _static_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a stand-in for the operator's static host or object store)."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def default_out(data: str | Path | None, schema: str | Path | None) -> Path:
    """The pipeline's folder when none is given: ``fedready-<schema name>`` for own data, else ``fedready-demo``.

    The demo and every own data set get folders of their own: one never resumes the other's run.
    """
    if data is None or schema is None:
        return Path("fedready-demo")
    from fedready.schema import load_schema

    return Path("fedready-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", load_schema(schema).name).strip(".-"))


def check_out(out: Path, given: dict[str, Any]) -> None:
    """Refuse an ``out`` folder whose recorded run was trained on other data or another schema.

    The pipeline resumes what it finds in ``out``: a run of another data set would be evaluated,
    signed and published as if it were this one.

    Raises
    ------
    ConfigError
        Naming ``out``, both digests and the fix.
    """
    from fedready.errors import ConfigError
    from fedready.schema import DataSchema
    from fedready.task import TaskSpec, data_digest, load_task

    run = Path(out) / "runs" / "pipeline"
    if not (run / "config.json").exists():
        return
    spec = TaskSpec(**{k: given[k] for k in ("data", "schema", "test", "test_fraction") if k in given})
    fix = (f"pass another --out, or move {run} away to train there again (the keys and the registry in {out} stay; "
           "publish the new model with another --version)")  # fmt: skip
    try:
        recorded = json.loads((run / "config.json").read_text())
        old_schema = json.loads((run / "schema.json").read_text()) if (run / "schema.json").exists() else None
    except (OSError, ValueError) as e:
        raise ConfigError("out", f"{out} holds an unreadable run ({e}); {fix}") from e
    try:
        now = data_digest(spec)
    except OSError as e:  # a mistyped --data or --test: named here, before the recorded run is compared
        raise ConfigError("data", f"cannot read {e.filename}: {e.strerror}; check the path") from e
    before = recorded.get("data_digest")
    if before not in (None, now):
        raise ConfigError("out", f"{out} holds a run trained on other data (data digest {str(before)[:19]}, this "
                                 f"data {now[:19]}); {fix}")  # fmt: skip
    if old_schema is not None:
        before, schema = DataSchema.model_validate(old_schema), load_task(spec).schema
        if before.digest() != schema.digest():
            raise ConfigError("out", f"{out} holds a run trained with another schema ('{before.name}' "
                                     f"{before.digest()[:19]}, this one '{schema.name}' {schema.digest()[:19]}); "
                                     f"{fix}")  # fmt: skip


def _tally(gates: list[dict[str, Any]]) -> str:
    counts = {o: sum(g["outcome"] == o for g in gates) for o in ("pass", "undecided", "fail")}
    return ", ".join(f"{n} {o}" for o, n in counts.items() if n)


def _say_reference(say: Callable[[str], None], report: dict[str, Any]) -> None:
    """Accuracy beside the numbers that make it mean something: always guessing the majority class, chance."""
    from fedready.metrics import below_majority

    m, est = report["metrics"], report.get("estimates", {})
    bal = est.get("metrics.balanced_accuracy_lift", {})
    lift = (f"[{bal['lo']:+.3f}, {bal['hi']:+.3f}]" if bal.get("lo") is not None else "(no interval)")
    say(f"    benchmark: accuracy {m['accuracy']:.4f} (majority class {m['majority_rate']:.4f}), balanced accuracy "
        f"{m['balanced_accuracy']:.4f} (chance {m['chance']:.4f}, lift {lift})")  # fmt: skip
    warning = below_majority(m)
    if warning:
        say(f"    {warning}")


def run_pipeline(
    out: Path, *, given: dict[str, Any], version: str, say: Callable[[str], None],
    simulate: Callable[..., dict[str, Any]], force: bool = False, reason: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every step into ``out`` and return a summary of what each produced.

    ``simulate`` trains (the CLI's ``run_simulate`` with its progress bar, or the API's); ``given``
    its options, the task's (``data``, ``schema``, ``test``, ``test_fraction``, ``model``) included.
    The release reaches only the channels its gates allow (stable only when every model gate and
    the shipped variant's gates pass); ``force`` with a ``reason`` overrides that, recorded in the
    registry's audit log.
    """
    from fedready.compression.pipeline import compress_run
    from fedready.errors import ConfigError
    from fedready.evaluation import evaluate_run
    from fedready.evaluation.gates import GateResult
    from fedready.registry import EdgeAgent, Registry, generate_keys, package_run, release_allowed, verify_artifact

    if force and not (reason and reason.strip()):
        raise ConfigError("reason", "--force needs --reason explaining why the gates are overridden")
    from fedready.task import TaskSpec, load_task

    out = Path(out)
    run = out / "runs" / "pipeline"
    result: dict[str, Any] = {"out": str(out)}
    spec_keys = ("data", "schema", "test", "test_fraction", "model")
    task = load_task(TaskSpec(**{k: given[k] for k in spec_keys if k in given}))  # a bad file fails here, first

    say(f"1/6 train: private federated run on {task.train_source}; benchmark: {task.test_source}")
    if (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
        say(f"    already trained: {run}")
    else:
        resume = run if (run / "config.json").exists() else None
        summary = simulate(given, out=run.parent, name=None if resume else run.name, resume=resume, ray_address=None)
    if summary.get("status") == "failed":
        from fedready.errors import IntegrityError

        raise IntegrityError(f"training failed: {summary['reason']}; first client error: "
                             f"{summary['first_client_error']} (see {run}/audit.jsonl)")  # fmt: skip
    result["train"] = {k: summary[k] for k in ("accuracy", "epsilon", "delta", "model_digest", "run_dir")}
    result["train"].update({k: summary.get(k) for k in ("majority_rate", "balanced_accuracy")})
    eps = (f"epsilon {summary['epsilon']:.3f} (delta {summary['delta']:g}; composed: training, row counts and "
           "post-training counts)") if summary.get("dp") else "no DP"  # fmt: skip
    say(f"    accuracy {summary['accuracy']:.4f}, {eps}")
    for caveat in summary.get("caveats", []):
        say(f"    {caveat}")
    if summary.get("mostly_rejected_clients"):
        from fedready.server.app import rejection_lines

        for line in rejection_lines(Path(summary["run_dir"])):
            say(f"    {line}")

    say("2/6 evaluate: fairness, stability, calibration, gates, model card")
    done = run / "evaluation.json"
    report = json.loads(done.read_text()) if done.exists() else None
    if report is None or report.get("model_digest") != summary["model_digest"] or "decision" not in report:
        report = evaluate_run(run)
    else:
        say("    already evaluated (same model digest)")
    blocking = [GateResult.from_dict(g) for g in report["gates"] if g["outcome"] != "pass"]
    result["evaluate"] = {"decision": report["decision"], "passed": report["passed"],
                          "blocking": [g.line() for g in blocking]}  # fmt: skip
    _say_reference(say, report)
    if report.get("mitigation_skipped"):
        say(f"    skipped post-processing: {report['mitigation_skipped']}")
    for note in (report.get("mitigation") or {}).get("small_groups", []):
        say(f"    {note}")
    say(f"    model gates: {report['decision']} ({_tally(report['gates'])}); model card {run / 'model_card.html'}")
    for g in blocking:
        say(f"    {g.line()}")

    say("3/6 compress: edge variants, each judged by its fidelity to the trained model")
    done = run / "compression" / "compression.json"
    comp = json.loads(done.read_text()) if done.exists() else None
    if comp is None or comp.get("model_digest") != summary["model_digest"] or "decision" not in comp:
        comp = compress_run(run)
    else:
        say("    already compressed (same model digest)")
    chosen = next((v for v in comp["variants"] if v["name"] == comp["selected"]), None)
    fp32 = next(v for v in comp["variants"] if v["name"] == "fp32")
    result["compress"] = {"selected": comp["selected"], "reason": comp["reason"], "skipped": comp.get("skipped", [])}
    for skip in comp.get("skipped", []):
        say(f"    skipped {skip['variant']}: {skip['reason']}")
    if chosen is None:
        say(f"    {comp['reason']}; fp32 failed one too, so nothing judged can ship: the release decision is failed")
    else:
        result["compress"].update(bytes=chosen["bytes"], fp32_bytes=fp32["bytes"], accuracy=chosen["accuracy"],
                                  fp32_accuracy=fp32["accuracy"])  # fmt: skip
        gates = chosen.get("decision", "passed")
        say(f"    selected {chosen['name']}: {chosen['bytes'] / 1024:.1f} KB "
            f"({fp32['bytes'] / chosen['bytes']:.1f}x smaller than fp32), accuracy {chosen['accuracy']:.4f} "
            f"(fp32 {fp32['accuracy']:.4f}); variant gates {gates}")  # fmt: skip
        if gates != "passed":
            say(f"    {comp['reason']}; fp32's gates are only undecided, so it ships as judged (calibrated)")

    say("4/6 sign: package the artifact with the operator key and verify it")
    keys = out / "keys"
    priv, pub = keys / "signing.key", keys / "signing.pub"
    if not priv.exists():
        generate_keys(keys)
    artifact, _ = package_run(run, key=priv, version=version, out=out / "artifacts")
    prov = verify_artifact(artifact, public_key=pub)
    result["sign"] = {"artifact": str(artifact), "gates": prov.evaluation}
    say(f"    {artifact} verified (release decision: {prov.evaluation})")

    say("5/6 publish: TUF registry, canary then stable (only what the gates allow)")
    reg_dir = out / "registry"
    fresh = not (reg_dir / "repository" / "metadata" / "root.json").exists()
    reg = Registry.init(reg_dir, actor="pipeline") if fresh else Registry(reg_dir)
    reg.publish(artifact, public_key=pub, actor="pipeline")
    private = summary.get("private") is True
    if not private:
        say("    NOT PRIVATE: promoted with --allow-not-private (recorded in the registry's audit log)")
    if force:
        say(f"    --force: every gate overridden, reason recorded: {reason}")
    channels = [c for c in ("canary", "stable")
                if force or release_allowed(prov.evaluation, prov.undecided_reach, c)]  # fmt: skip
    why = "; ".join(x for x in (reason if force else None, None if private else
                                "pipeline demo: the run is not private (see its caveats)") if x)  # fmt: skip
    for channel in channels:
        reg.promote(version, channel=channel, approver="pipeline", rollout_percent=100.0, force=force,
                    reason=why or None, allow_not_private=not private)  # fmt: skip
    result["publish"] = {"decision": prov.evaluation, "channels": channels}
    if "stable" in channels:
        say(f"    canary and stable -> {version}; serve {reg.repo} from any static host")
    else:
        where = "stopped at canary" if channels else "not promoted to any channel"
        say(f"    {where}: the release decision is {prov.evaluation}; nothing failed or undecided reaches stable "
            "(pass --force --reason '...' to override)")  # fmt: skip
        for line in result["evaluate"]["blocking"]:
            say(f"    blocking: {line}")
        if chosen is None or chosen.get("decision", "passed") != "passed":
            say(f"    blocking: {comp['reason']}")

    say("6/6 device: edge update over HTTP (TUF + signature checks), predict raw rows")
    if not channels:
        say("    skipped: no channel serves this version")
        result["device"] = None
        return result
    device = out / "device"
    with _static_server(reg.repo) as url:
        agent = EdgeAgent(device)
        res = agent.update(repo=url, channel=channels[-1], device_id=DEVICE_ID,
                           root=reg.metadata_dir / "1.root.json", public_key=pub)  # fmt: skip
    if channels[-1] != "stable":
        say(f"    (a device in the {channels[-1]} cohort)")
    table, target = task.test, task.schema.target.column
    shown = min(5, len(table))
    rows = [{c: str(v[i]) for c, v in table.columns.items() if c != target} for i in range(shown)]  # raw, unlabelled
    preds = agent.predictor().predict(rows)
    truth = [task.classes[int(k)] for k in task.y_test[:shown]]
    result["device"] = {"home": str(device), "version": res.version, "predictions": preds}
    hits = sum(p["label"] == t for p, t in zip(preds, truth, strict=True))
    say(f"    {shown} raw benchmark rows predicted on the device; {hits} match their label")
    for i, (row, p, t) in enumerate(zip(rows, preds, truth, strict=True)):
        first = ", ".join(f"{c.name}={row[c.name]}" for c in task.schema.features[:3])  # model inputs only
        say(f"    row {i} ({first}, ...) -> {p['label']} (p={p['probability']:.3f}; labelled {t})")
    say(f"serve it: fedready edge serve --home {device}")
    return result
