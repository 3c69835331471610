"""Signed artifacts and the registry: ``keys``, ``package``, ``verify``, ``registry ...``, ``reproduce``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedready.cli._common import RegistryPath, _echo_json, _errors, app, err
from fedready.errors import ConfigError

keys_app = typer.Typer(no_args_is_help=True, help="Operator signing keys.")
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option(help="Folder for signing.key (private, mode 0600) and signing.pub.")],
    name: Annotated[str, typer.Option(help="File stem of the key pair.")] = "signing",
) -> None:
    """Create an ECDSA P-256 key pair for signing artifacts."""
    from fedready.registry import generate_keys

    with _errors():
        priv, pub = generate_keys(out, name=name)
    err.print(f"private key {priv} (keep it offline), public key {pub} (give it to devices)")


@app.command()
def package(
    run: Annotated[Path, typer.Argument(help="A run folder written by fedready simulate.")],
    key: Annotated[Path, typer.Option(help="Operator private key (PEM) that signs the artifact.")],
    version: Annotated[str, typer.Option(help="Artifact version, e.g. 1.0.0; immutable once written.")],
    out: Annotated[Path, typer.Option(help="Folder of artifacts; the artifact goes to OUT/VERSION.")] = Path(
        "artifacts"
    ),
    parent_version: Annotated[
        str | None, typer.Option(help="Version this model replaces (recorded in provenance).")
    ] = None,
    unknown_group: Annotated[
        str | None,
        typer.Option(
            help="Rows whose sensitive value the fairness rule does not know: refuse (default), "
            "no-post-processing or group:NAME (signed into thresholds.json)."
        ),
    ] = None,
) -> None:
    """Write a signed, versioned artifact (ONNX model, schema, provenance, reports) for a run."""
    from fedready.registry import package_run

    with _errors():
        path, new = package_run(run, key=key, version=version, out=out, parent_version=parent_version,
                                unknown_group=unknown_group)  # fmt: skip
    err.print(f"{'packaged' if new else 'already packaged, unchanged'}: {path}")
    typer.echo(str(path))


@app.command()
def verify(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder.")],
    public_key: Annotated[Path, typer.Option(help="Operator public key (PEM).")],
) -> None:
    """Check every file of an artifact against its signature (exit 1 naming what differs)."""
    from fedready.registry import verify_artifact

    with _errors():
        prov = verify_artifact(artifact, public_key=public_key)
    err.print(f"verified {artifact}: version {prov.version}, run {prov.run_id}, model {prov.model_digest}")


registry_app = typer.Typer(no_args_is_help=True, help="The model registry: a TUF repository with release channels.")
app.add_typer(registry_app, name="registry")


@registry_app.command("init")
def registry_init(
    path: RegistryPath,
    channel: Annotated[list[str] | None, typer.Option(help="Channel names (repeat). [default: canary, stable]")] = None,
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Create a registry: role keys, version-1 TUF metadata, an audit log."""
    from fedready.registry import CHANNELS, Registry

    with _errors():
        reg = Registry.init(path, channels=tuple(channel or CHANNELS), actor=actor)
    err.print(f"registry {reg.path}: serve {reg.repo}; give devices {reg.metadata_dir / '1.root.json'}; "
              f"keep {reg.keys_dir} offline")  # fmt: skip


@registry_app.command("publish")
def registry_publish(
    path: RegistryPath,
    artifact: Annotated[Path, typer.Argument(help="A signed artifact folder (fedready package).")],
    public_key: Annotated[Path, typer.Option(help="Operator public key the artifact must verify with.")],
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Verify an artifact and add it to the registry (immutable once published)."""
    from fedready.registry import Registry

    with _errors():
        version = Registry(path).publish(artifact, public_key=public_key, actor=actor)
    err.print(f"published {version}")


@registry_app.command("promote")
def registry_promote(
    path: RegistryPath,
    version: Annotated[str, typer.Argument(help="A published version.")],
    channel: Annotated[str, typer.Option(help="canary | stable (or a configured channel).")],
    approver: Annotated[str, typer.Option(help="Who approved this promotion (recorded).")],
    rollout: Annotated[
        float, typer.Option(help="Percent of devices that take a canary (by hash of their id).")
    ] = 100.0,
    review_by: Annotated[
        str | None, typer.Option(help="ISO date the model must be reviewed by. [default: +90 days]")
    ] = None,
    force: Annotated[bool, typer.Option(help="Promote although gates failed or never ran (needs --reason).")] = False,
    allow_not_private: Annotated[
        bool, typer.Option(help="Promote a model whose ledger says it is not private (needs --reason; recorded).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option(help="Why --force or --allow-not-private is justified (recorded).")
    ] = None,
    min_agreement: Annotated[
        float | None, typer.Option(help="Refuse unless the shadow report shows at least this agreement (0-1).")
    ] = None,
    shadow_report: Annotated[Path | None, typer.Option(help="JSON written by `fedready shadow --out`.")] = None,
) -> None:
    """Point a channel at a version; refuses failed or unrun gates without --force --reason, and a model that is
    not private (--insecure-seeded-noise, --no-dp) without --allow-not-private --reason."""
    import datetime as dt

    from fedready.registry import Registry, read_json

    with _errors():
        try:
            review = dt.date.fromisoformat(review_by) if review_by else None
        except ValueError as e:
            raise ConfigError("review-by", f"'{review_by}' is not an ISO date like 2027-03-01") from e
        if shadow_report is not None and not shadow_report.is_file():
            raise ConfigError(
                "shadow-report", f"{shadow_report} does not exist; write one with `fedready shadow --out`"
            )
        report = read_json(shadow_report, what="shadow report") if shadow_report is not None else None
        doc = Registry(path).promote(version, channel=channel, approver=approver, rollout_percent=rollout,
                                     review_by=review, force=force, reason=reason, min_agreement=min_agreement,
                                     shadow_report=report, allow_not_private=allow_not_private)  # fmt: skip
    forced = f" FORCED ({doc.reason})" if doc.forced else ""
    err.print(f"{channel} -> {doc.version} ({doc.rollout_percent:g}%), approved by {doc.approver}, "
              f"review by {doc.review_by}{forced}")  # fmt: skip


@registry_app.command("rollback")
def registry_rollback(
    path: RegistryPath,
    channel: Annotated[str, typer.Option(help="The channel to point back at its previous version.")],
    approver: Annotated[str, typer.Option(help="Who approved the rollback (recorded).")],
    reason: Annotated[str, typer.Option(help="Why (recorded).")] = "",
) -> None:
    """Point a channel back at the version it held before its last promotion."""
    from fedready.registry import Registry

    with _errors():
        doc = Registry(path).rollback(channel=channel, approver=approver, reason=reason)
    if doc.paused:
        err.print(f"{channel} paused: {doc.paused_reason}; its devices run stable's version")
    else:
        err.print(f"{channel} -> {doc.version}")


@registry_app.command("auto-rollback")
def registry_auto_rollback(
    path: RegistryPath,
    channel: Annotated[str, typer.Option(help="The channel whose devices' alerts are read (e.g. canary).")],
    alerts: Annotated[
        Path, typer.Option(help="Alert JSON lines from `fedready monitor` (devices' files concatenated).")
    ],
    min_devices: Annotated[
        int, typer.Option(help="Distinct devices that must report a breach of the current version.")
    ] = 3,
    min_share: Annotated[
        float, typer.Option(help="... or this share of the channel's devices (needs --fleet-size), if larger.")
    ] = 0.1,
    fleet_size: Annotated[
        int | None, typer.Option(help="Devices following this registry (the canary's share of them is its cohort).")
    ] = None,
    approver: Annotated[str, typer.Option(help="Recorded as the rollback's approver.")] = "fedready auto-rollback",
    max_skew: Annotated[
        float, typer.Option(help="Seconds an alert's time may lie ahead of this machine's clock.")
    ] = 120.0,
) -> None:
    """Roll a channel back when enough enrolled devices report a breach of the version they run (for cron or CI).

    Counts only alerts signed by a device key enrolled with `registry enrol`, for the version the channel
    serves since its promotion, and not dated ahead of now; each device counts once. Acts only on a channel
    devices run. Prints one JSON object with the decision; exit code 0 whether or not it rolled back.
    """
    from fedready.registry import Registry

    with _errors():
        result = Registry(path).auto_rollback(channel=channel, alerts=alerts, min_devices=min_devices,
                                              min_share=min_share, fleet_size=fleet_size, approver=approver,
                                              max_skew=max_skew)  # fmt: skip
    _echo_json(result)
    if result["rolled_back"]:
        to = result["version"] or "paused (its devices run stable's version)"
        err.print(f"{channel}: {result['replaced']} -> {to} ({result['devices']} device(s), "
                  f"{result['breaches']} breach(es))")  # fmt: skip
    elif result.get("why"):
        err.print(f"{channel}: {result['why']}")
    elif result.get("breaches"):
        err.print(f"{channel}: {result['devices']} device(s) reported breaches, {result['needed']} needed; no rollback")
    if result.get("refused"):
        why = ", ".join(f"{k}: {v}" for k, v in result["refused"].items())
        err.print(f"{channel}: alerts not counted ({why}); enrol devices with `fedready registry enrol`")


@registry_app.command("enrol")
def registry_enrol(
    path: RegistryPath,
    device_id: Annotated[str, typer.Option(help="The device's id (as in `edge update --device-id`).")],
    public_key: Annotated[str, typer.Option(help="The key `fedready edge enrol` printed on the device (base64).")],
    approver: Annotated[str, typer.Option(help="Who approved the enrolment (recorded).")],
) -> None:
    """Enrol a device: its alerts count for `registry auto-rollback` only when signed by this key."""
    from fedready.registry import Registry

    with _errors():
        Registry(path).enrol(device_id=device_id, public_key=public_key, approver=approver)
    err.print(f"enrolled {device_id}")


@registry_app.command("revoke")
def registry_revoke(
    path: RegistryPath,
    device_id: Annotated[str, typer.Option(help="The enrolled device to remove.")],
    approver: Annotated[str, typer.Option(help="Who approved the revocation (recorded).")],
) -> None:
    """Remove a device's key (lost, retired or compromised): its alerts stop counting."""
    from fedready.registry import Registry

    with _errors():
        Registry(path).revoke(device_id=device_id, approver=approver)
    err.print(f"revoked {device_id}")


@registry_app.command("rollout")
def registry_rollout(
    path: RegistryPath,
    percent: Annotated[float, typer.Argument(help="Share of devices (0-100] that take the canary.")],
    approver: Annotated[str, typer.Option(help="Who approved the change (recorded).")],
    channel: Annotated[str, typer.Option(help="The channel whose rollout changes.")] = "canary",
) -> None:
    """Widen or narrow a canary's rollout, keeping its version (refused while the canary is paused)."""
    from fedready.registry import Registry

    with _errors():
        doc = Registry(path).set_rollout(channel=channel, rollout_percent=percent, approver=approver)
    err.print(f"{channel} {doc.version}: rollout {doc.rollout_percent:g}%")


@registry_app.command("refresh")
def registry_refresh(path: RegistryPath) -> None:
    """Re-sign the timestamp metadata (it expires after one day: run this daily)."""
    from fedready.registry import Registry

    with _errors():
        version = Registry(path).refresh()
    err.print(f"timestamp version {version}")


@registry_app.command("rotate-key")
def registry_rotate_key(
    path: RegistryPath,
    role: Annotated[str, typer.Argument(help="root | targets | snapshot | timestamp")],
    actor: Annotated[str, typer.Option(help="Who runs this (audit log).")] = "",
) -> None:
    """Replace one TUF role key; devices follow through the new signed root."""
    from fedready.registry import Registry

    with _errors():
        keyid = Registry(path).rotate_key(role, actor=actor)
    err.print(f"{role} key rotated, new key id {keyid}")


@registry_app.command("status")
def registry_status(
    path: RegistryPath,
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON on stdout.")] = False,
) -> None:
    """Channels, published versions, metadata expiry; flags models past their review date."""
    from fedready.registry import Registry

    with _errors():
        status = Registry(path).status()
    if json_out:
        _echo_json(status)
        return
    for name, ch in status["channels"].items():
        if ch is None:
            typer.echo(f"{name}: (nothing promoted)")
            continue
        flag = "  PAST REVIEW DATE" if ch["past_review"] else ""
        forced = f"  forced: {ch['reason']}" if ch["forced"] else ""
        forced += f"  PAUSED: {ch['paused_reason']}" if ch.get("paused") else ""
        forced += f"  withdrawn: {', '.join(ch['withdrawn'])}" if ch.get("withdrawn") else ""
        typer.echo(f"{name}: {ch['version']} rollout {ch['rollout_percent']:g}% approved by {ch['approver']} "
                   f"review by {ch['review_by']}{flag}{forced}")  # fmt: skip
    devices = status.get("devices")
    if devices is not None:
        state = {"live": "live", "paused": "PAUSED", "behind-stable": "behind stable: a later stable change wins",
                 "withdrawn": "WITHDRAWN: stable rolled its version back", "none": "none"}[devices["canary_state"]]  # fmt: skip
        outside, inside = devices["stable_outside_cohort"], devices["stable_inside_cohort"]
        groups = [f"stable outside the cohort -> {outside}"] if outside else []
        if inside:
            groups.append(f"stable inside the {devices['cohort_percent']:g}% cohort -> {inside}")
        groups.append(f"canary devices -> {devices['canary_devices']}")
        typer.echo(f"devices: {'; '.join(groups)} (canary {state})")
    typer.echo(f"published: {', '.join(status['versions']) or 'none'}")
    for role, md in status["metadata"].items():
        typer.echo(f"{role}.json v{md['version']} expires {md['expires']}{'  EXPIRED' if md['expired'] else ''}")


@app.command()
def reproduce(
    artifact: Annotated[Path, typer.Argument(help="An artifact folder of a simulation-trained model.")],
    public_key: Annotated[Path | None, typer.Option(help="Verify the artifact with this key first.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Keep the re-run in OUT/reproduce-VERSION (default: discarded).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
    max_accuracy_gap: Annotated[
        float, typer.Option(help="DP runs: largest accuracy difference from the recorded model.")
    ] = 0.02,
    min_agreement: Annotated[
        float, typer.Option(help="DP runs: smallest share of benchmark rows decided alike with the shipped model.")
    ] = 0.90,
) -> None:
    """Re-run an artifact's recorded configuration and check it: config, data and code exactly; the model
    bit for bit if training used no secret noise, else its behaviour within the stated bounds (exit 1 if not)."""
    from fedready.registry import reproduce_artifact

    with _errors():
        report = reproduce_artifact(artifact, public_key=public_key, out=out, max_accuracy_gap=max_accuracy_gap,
                                    min_agreement=min_agreement)  # fmt: skip
    if json_out:
        _echo_json(report)
    ok = report["match"] and report["config_matches"]
    verdict = "[green]matches[/]" if ok else "[red]MISMATCH[/]"
    if report["config_matches"]:
        data = "data matches" if report["data_matches"] else "[red]DATA DIFFERS[/]"
        code = "code matches" if report["code_matches"] else "[yellow]code differs (version or commit)[/]"
        if report["mode"] == "exact":
            err.print(f"{report['version']}: {data}, {code}; recorded {report['recorded_digest']}, reproduced "
                      f"{report['reproduced_digest']}: {verdict}")  # fmt: skip
        else:
            gap = report.get("accuracy_gap")
            err.print(f"{report['version']}: {data}, {code}; DP noise is secret, so the model is compared by "
                      f"behaviour: accuracy gap {gap if gap is None else round(gap, 4)} (<= {max_accuracy_gap}), "
                      f"agreement {report['agreement']:.4f} (>= {min_agreement}): {verdict}")  # fmt: skip
    else:
        err.print(f"{report['version']}: {verdict}: the recorded config.json is not the one the model was trained "
                  "with (its digest differs from provenance.json); nothing was re-run")  # fmt: skip
    if not ok:
        raise typer.Exit(1)
