"""The model card: Markdown and a self-contained HTML page (plots embedded as base64 PNG).

Both are rendered from one list of sections, each a list of blocks (paragraph,
bullet list, table, figure), so the two formats cannot drift apart.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from fedready.files import atomic_write_text
from fedready.privacy.auditing import AUDIT_FILE, AUDIT_FORMAT, empirical_privacy_line, read_audits

__all__ = ["SECTIONS", "record_audit", "refresh_model_card", "render_html", "render_markdown", "write_model_card"]

SECTIONS = (
    "Intended use",
    "Training data provenance",
    "Privacy guarantees",
    "Metrics on the benchmark",
    "Metrics per slice",
    "Federated fairness",
    "Stability",
    "Calibration",
    "Fairness mitigation",
    "Explanations",
    "Gate results",
    "Edge variants",
    "Known limitations",
)

Block = tuple[str, Any]  # ("p", text) | ("ul", [text]) | ("table", (header, rows)) | ("img", (alt, png bytes))


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "undefined"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _figure(draw: Any, alt: str) -> Block:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    draw(fig, ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return ("img", (alt, buf.getvalue()))


def _plot_history(r: dict[str, Any]) -> Block | None:
    hist = r["training"]["history"]
    if not hist:
        return None

    def draw(fig: Any, ax: Any) -> None:
        rounds = [h["round"] for h in hist]
        ax.plot(rounds, [h["accuracy"] for h in hist], color="tab:blue", label="accuracy")
        ax.set_xlabel("round")
        ax.set_ylabel("holdout accuracy", color="tab:blue")
        if r["privacy"]["dp"]:
            ax2 = ax.twinx()
            ax2.plot(rounds, [h["epsilon"] for h in hist], color="tab:red")
            ax2.set_ylabel("epsilon spent", color="tab:red")
        ax.set_title("accuracy and epsilon per round")

    return _figure(draw, "accuracy and epsilon per round")


def _plot_groups(r: dict[str, Any]) -> Block:
    def draw(fig: Any, ax: Any) -> None:
        labels, acc, tpr, fpr = [], [], [], []
        for attr, entry in r["fairness"].items():
            for g, m in entry["groups"].items():
                if m["count"]:  # multi-class groups carry accuracy only (rates are per class)
                    labels.append(f"{attr}={g}")
                    acc.append(m["accuracy"] or 0)
                    tpr.append(m.get("tpr") or 0)
                    fpr.append(m.get("fpr") or 0)
        idx = range(len(labels))
        w = 0.27
        ax.bar([i - w for i in idx], acc, w, label="accuracy")
        ax.bar(list(idx), tpr, w, label="TPR")
        ax.bar([i + w for i in idx], fpr, w, label="FPR")
        ax.set_xticks(list(idx), labels, rotation=45, ha="right", fontsize=7)
        ax.legend(fontsize=7)
        ax.set_title("per-group metrics (benchmark)")

    return _figure(draw, "per-group metrics")


def _plot_reliability(r: dict[str, Any]) -> Block:
    def draw(fig: Any, ax: Any) -> None:
        bins = [b for b in r["calibration"]["bins"] if b["count"]]
        low = r["calibration"]["bins"][0]["low"]
        ax.plot([low, 1], [low, 1], "k--", lw=1, label="perfect")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="model")
        ax.set_xlabel("confidence of the predicted class")
        ax.set_ylabel("accuracy")
        ax.set_title(f"reliability diagram (ECE {r['calibration']['ece']:.4f})")
        ax.legend(fontsize=7)

    return _figure(draw, "reliability diagram")


def _plot_perturbations(r: dict[str, Any]) -> Block:
    def draw(fig: Any, ax: Any) -> None:
        p = r["stability"]["perturbations"]
        g = sorted((float(k.split("-", 1)[1]), v) for k, v in p.items() if k.startswith("gaussian-"))
        ax.plot([s for s, _ in g], [v["accuracy_drop"] for _, v in g], "o-", label="accuracy drop")
        ax.plot([s for s, _ in g], [v["flip_rate"] for _, v in g], "s-", label="flip rate")
        ax.set_xlabel("Gaussian noise std (share of the declared range)")
        ax.set_title("perturbation curves")
        ax.legend(fontsize=7)

    return _figure(draw, "perturbation curves")


def _plot_importance(r: dict[str, Any]) -> Block:
    def draw(fig: Any, ax: Any) -> None:
        items = list(r["importance"].items())[::-1]
        ax.barh([k for k, _ in items], [v for _, v in items])
        ax.set_xlabel("accuracy drop when shuffled")
        ax.set_title("permutation importance (benchmark)")
        ax.tick_params(axis="y", labelsize=7)

    return _figure(draw, "permutation importance")


def _est(r: dict[str, Any], path: str, value: Any = None, digits: int = 4) -> str:
    """``value [lo, hi]`` for a number whose interval is in the report's ``estimates`` (else just the value)."""
    e = (r.get("estimates") or {}).get(path)
    if e is None or e.get("value") is None:
        return _num(value, digits)
    if e.get("lo") is None or e.get("hi") is None:
        return f"{_num(e['value'], digits)} (no interval: {e.get('note') or 'undefined'})"
    return f"{_num(e['value'], digits)} [{_num(e['lo'], digits)}, {_num(e['hi'], digits)}]"


def _interval(e: dict[str, Any] | None, digits: int = 3) -> str:
    """An interval dict as ``value [lo, hi]``; ``undefined`` (with why) when it has none."""
    if not e or e.get("value") is None:
        return "undefined" + (f" ({e['note']})" if e and e.get("note") else "")
    if e.get("lo") is None or e.get("hi") is None:
        return f"{_num(e['value'], digits)}, no interval ({e.get('note', '')})"
    return f"{_num(e['value'], digits)} [{_num(e['lo'], digits)}, {_num(e['hi'], digits)}]"


_DISPARITY_NAMES = (("demographic_parity_difference", "demographic parity difference"),
                    ("demographic_parity_ratio", "demographic parity ratio"),
                    ("equalized_odds_difference", "equalized odds difference"),
                    ("equal_opportunity_difference", "equal opportunity difference"),
                    ("worst_group_accuracy", "worst-group accuracy"))  # fmt: skip


def _fair_table(fair: dict[str, Any], r: dict[str, Any] | None = None, prefix: str = "fairness") -> list[Block]:
    out: list[Block] = []
    for attr, e in fair.items():
        if "per_class" in e:
            out += _fair_table_one_vs_rest(attr, e)
        else:
            rows = [[g, _num(m["count"], 0), _num(m["accuracy"]), _num(m["selection_rate"]), _num(m["tpr"]),
                     _num(m["fpr"])] for g, m in e["groups"].items()]  # fmt: skip
            out.append(("table", (["group of " + attr, "rows", "accuracy", "selection rate", "TPR", "FPR"], rows)))
        rows = [[name, _est(r or {}, f"{prefix}.{attr}.{key}", e.get(key))] for key, name in _DISPARITY_NAMES]
        out.append(("table", ([f"{attr}: disparity (95% interval)", "value"], rows)))
        if e.get("undefined_groups"):
            out.append(("p", f"Undefined (no members or no positives/negatives): {', '.join(e['undefined_groups'])}."))
    return out


def _fair_table_one_vs_rest(attr: str, e: dict[str, Any]) -> list[Block]:
    """A multi-class attribute: group accuracy, then every class's one-vs-rest disparities."""
    rows = [[g, _num(m["count"], 0), _num(m["accuracy"])] for g, m in e["groups"].items()]
    per = [[c, _num(m["demographic_parity_difference"]), _num(m["equalized_odds_difference"]),
            _num(m["equal_opportunity_difference"])] for c, m in e["per_class"].items()]  # fmt: skip
    return [
        ("table", (["group of " + attr, "rows", "accuracy"], rows)),
        ("table", ([f"class (one-vs-rest), {attr}", "demographic parity diff.", "equalized odds diff.",
                    "equal opportunity diff."], per)),
    ]  # fmt: skip


def _side_by_side(r: dict[str, Any], fed: dict[str, Any]) -> list[list[str]]:
    rows = []
    for attr in fed.get("fairness", {}):
        bench = r.get("fairness", {}).get(attr) or {}
        for key, name in _DISPARITY_NAMES:
            rows.append([attr, name, _est(r, f"fairness.{attr}.{key}", bench.get(key)),
                         _interval((fed.get("estimates") or {}).get(f"federated.fairness.{attr}.{key}"), 4)])
    return rows


def build_sections(r: dict[str, Any]) -> list[tuple[str, list[Block]]]:
    """The card's content as (heading, blocks), in :data:`SECTIONS` order."""
    pv, tr, d = r["privacy"], r["training"], r["data"]
    s: dict[str, list[Block]] = {k: [] for k in SECTIONS}
    classes = d.get("classes", ["0", "1"])
    kind = "Binary" if len(classes) == 2 else f"{len(classes)}-class"
    s["Intended use"] = [
        ("p", f"{kind} classifier '{r['model']}' for the '{d['schema']}' schema (classes: {', '.join(classes)}), "
              "trained by federated learning. Intended for research on private federated training and as a "
              "decision aid reviewed by a person, not for automated decisions about individuals' credit, "
              "employment or benefits. Decisions differ across protected groups (see Metrics per slice)."),
    ]  # fmt: skip
    s["Training data provenance"] = [("ul", [
        f"schema '{d['schema']}', digest {d['schema_digest']}",
        f"federation: {tr['clients']} clients, partitioner '{tr['partitioner']}' (alpha {tr['alpha']}), "
        f"seed {tr['seed']}, each client keeps {tr['val_fraction']:.0%} of its rows for local validation",
        f"training: {tr['rounds']} rounds, aggregator '{tr['aggregator']}'",
        f"benchmark: {d['source']}, {d['rows']} rows, digest {d['digest']}",
        f"model digest {r['model_digest']}",
    ])]  # fmt: skip
    if pv["dp"]:
        eps = [f"record-level DP (Opacus DP-SGD, noisy counts): epsilon {_num(pv['epsilon'], 3)} at delta "
               f"{pv['delta']:g} (max over clients, composed over every release about a client's rows: its noisy "
               f"row count, every training round, its post-training counts; {pv['accountant']} accountant; "
               f"target {_num(pv['target_epsilon'], 3)})"]  # fmt: skip
        parts = pv.get("epsilon_parts") or {}
        if parts:
            eps.append("each part alone: " + ", ".join(f"{k} {_num(v, 3)}" for k, v in parts.items() if v))
        for caveat in pv.get("caveats") or []:
            eps.append(f"CAVEAT: {caveat}")
        if pv["per_client_epsilon"]:
            per = pv["per_client_epsilon"].values()
            eps.append(f"per client (ledger): epsilon from {min(per):.3f} to {max(per):.3f} over "
                       f"{len(pv['per_client_epsilon'])} clients")  # fmt: skip
    else:
        eps = ["no sample-level differential privacy: records are not protected by DP"]
    if pv["client_epsilon"] is not None:
        eps.append(f"client-level DP ({pv['client_dp']}): epsilon {_num(pv['client_epsilon'], 3)} "
                   f"at delta {pv['client_delta']:g}")  # fmt: skip

    eps += [empirical_privacy_line(a) for _, a in sorted((r.get("empirical_privacy") or {}).items())]
    eps.append(f"declined rounds (budget): {pv['declines']}; secure aggregation: {'yes' if pv['secagg'] else 'no'}")
    eps.append("the ledger (ledger.json) can be recomputed with `fedready ledger RUN`")
    s["Privacy guarantees"] = [("ul", eps)]
    img = _plot_history(r)
    met = r["metrics"]
    rows = [["accuracy", _est(r, "metrics.accuracy", met["accuracy"])], ["rows", str(d["rows"])]]
    if "majority_rate" in met:
        rows += [["majority class share (always answering it)", _num(met["majority_rate"])],
                 ["accuracy lift over the majority class", _est(r, "metrics.accuracy_lift", met.get("accuracy_lift"))]]
    if "balanced_accuracy" in met:
        rows += [["balanced accuracy (mean recall)", _num(met["balanced_accuracy"])],
                 [f"balanced accuracy over chance ({_num(met.get('chance', 1 / len(classes)))})",
                  _est(r, "metrics.balanced_accuracy_lift", met.get("balanced_accuracy_lift"))]]  # fmt: skip
    rows += [[f"recall of '{c}'", _num(v)] for c, v in met.get("recall", {}).items()] if len(classes) > 2 else []
    rows += [["positive rate", _num(d["positive_rate"])]] if "positive_rate" in d else []
    s["Metrics on the benchmark"] = [
        ("p", "Source: the coordinator's public benchmark (exact counts, no privacy cost). Intervals are 95% "
              "confidence intervals of the finite benchmark sample (Wilson, or a bootstrap over its rows)."),
        ("table", (["metric", "value [95% interval]"], rows)),
    ] + ([img] if img else [])  # fmt: skip
    s["Metrics per slice"] = _fair_table(r["fairness"], r) + [_plot_groups(r)]
    fed = r.get("federated")
    if fed and isinstance(fed.get("client_accuracy", {}).get("std"), dict):
        ca = fed["client_accuracy"]
        noisy = not fed.get("exact", False)
        how = (f"each client noised its counts before they left (std {fed['accuracy_noise_std']:.3g} on its two "
               f"accuracy counts, {fed['noise_std']:.3g} on each count it added to the sums, so "
               f"{fed.get('sum_noise_std', 0):.3g} on each summed count)") if noisy else \
            "exact counts (--exact-evaluation: outside the DP guarantee)"  # fmt: skip
        client_rows = [[c, _interval(e), "left out: " + ca["undefined_clients"][c] if c in ca["undefined_clients"]
                        else ""] for c, e in ca["clients"].items()]  # fmt: skip
        s["Federated fairness"] = [
            ("p", f"Source: the clients' own validation rows, {fed['clients_answered']} clients; {how}. Every number "
                  "is shown with a 95% interval covering both the noise and the finite validation samples. No row "
                  "left a client."),
            ("p", f"Accuracy spread across clients (std, noise-corrected): {_interval(ca['std'])}; worst estimated "
                  f"client {ca['worst_client']}: {_interval(ca['worst_accuracy'])}."),
            ("table", (["client", "validation accuracy [95% interval]", ""], client_rows)),
            ("p", "Group fairness by source, side by side (the benchmark: exact counts of its finite sample; the "
                  "clients: their noisy summed counts):"),
            ("table", (["attribute", "metric", "benchmark [95% interval]", "clients [95% interval]"],
                       _side_by_side(r, fed))),
            ("p", "Group fairness on the clients' summed counts, per group:"),
            *_fair_table(fed["fairness"], {"estimates": fed.get("estimates", {})}, prefix="federated.fairness"),
        ]  # fmt: skip
    else:
        s["Federated fairness"] = [("p", "Not computed (evaluation on external data or --no-federated).")]
    st = r["stability"]
    rows = [[k, _est(r, f"stability.perturbations.{k}.accuracy_drop", v["accuracy_drop"]),
             _est(r, f"stability.perturbations.{k}.flip_rate", v["flip_rate"])] for k, v in st["perturbations"].items()]
    s["Stability"] = [("table", (["perturbation", "accuracy drop", "flip rate"], rows)), _plot_perturbations(r)]
    if "churn" in st:
        s["Stability"].append(
            ("p", f"Version churn against {st['baseline']}: {_num(st['churn'])} of decisions change.")
        )
    if "seeds" in st:
        sd = st["seeds"]
        s["Stability"].append(("p", f"Seed stability over {sd['models']} retrains: accuracy std "
                                    f"{_num(sd['accuracy_std'])}, rows on which the models disagree "
                                    f"{_num(sd['disagreement_rate'])}."))  # fmt: skip
    cal = r["calibration"]
    s["Calibration"] = [("p", f"Expected calibration error {_est(r, 'calibration.ece', cal['ece'])}, Brier score "
                              f"{_est(r, 'calibration.brier', cal['brier'])} (the trained model's own probabilities; "
                              "the shipped variant is temperature-scaled, see Edge variants)."),
                        _plot_reliability(r)]  # fmt: skip
    m = r.get("mitigation")
    if m:
        f2 = m["folds"]["fit_b_measure_a"]
        s["Fairness mitigation"] = [
            ("p", f"Post-processing per group of '{m['attribute']}' ({m['method']}), stored as thresholds.json. "
                  f"Fitted on half A of the benchmark, measured on the other half B ({m['rows_measured']} rows):"),
            ("table", (["", "before", "after"], [
                ["accuracy", _num(m["accuracy_before"]), _num(m["accuracy_after"])],
                [f"equalized odds difference ({m['attribute']})", _num(m["eod_before"]), _num(m["eod_after"])]])),
            ("p", f"Accuracy cost {m['accuracy_cost_points']:.2f} points; swapped fold: EOD {_num(f2['eod_before'])} "
                  f"-> {_num(f2['eod_after'])}, cost {f2['accuracy_cost_points']:.2f} points."),
        ]  # fmt: skip
        s["Fairness mitigation"] += [("p", note[0].upper() + note[1:] + ".") for note in m.get("small_groups", [])]
    elif r.get("mitigation_skipped"):
        s["Fairness mitigation"] = [("p", r["mitigation_skipped"] + ".")]
    else:
        s["Fairness mitigation"] = [("p", "No sensitive attribute declared: nothing to mitigate.")]
    s["Explanations"] = [
        ("p", "Global feature importance: the accuracy lost when one column is shuffled across the benchmark's rows. "
              "Per-decision attributions and counterfactuals: `fedready explain RUN --row N`."),
        _plot_importance(r),
    ]  # fmt: skip
    decision = r.get("decision", "passed" if r["passed"] else "failed")
    undecided = (r.get("promotion") or {}).get("undecided", "canary")
    s["Gate results"] = [
        ("p", f"Policy '{r['policy']['name']}' (version {r['policy']['version']}): the model's gates are "
              f"{decision.upper()}. A gate passes when its whole 95% interval is on the right side of the limit, "
              f"fails when it is wholly on the wrong side, and is undecided otherwise; an undecided model may reach: "
              f"{undecided if undecided != 'block' else 'no channel'} (never stable unless the policy says so)."),
        ("table", (["gate", "outcome", "measured [95% interval]", "limit", "source", "note"],
                   [[g["gate"], g.get("outcome", "pass" if g["passed"] else "fail"),
                     _interval({"value": g["measured"], "lo": g.get("lo"), "hi": g.get("hi")}), _num(g["limit"]),
                     g.get("source", ""), (g.get("note") or "") + ("; " + g["decide"] if g.get("decide") else "")]
                    for g in r["gates"]])),
    ]  # fmt: skip
    comp = r.get("compression")
    if comp:
        s["Edge variants"] = [
            ("p", "Built by `fedready compress` from this model using only the server's public data (distillation, "
                  "pruning, int8 quantisation, temperature scaling): post-processing of the DP model, so the privacy "
                  "guarantees above still hold. Each variant is judged by the policy's variant gates, on its fidelity "
                  "to this model on the benchmark (accuracy lost, decisions agreeing, calibration, change in group "
                  f"fairness); the smallest that passes them ships: {comp['selected'] or 'none passed'}."),
            ("table", (["variant", "KB", "accuracy", "variant gates"],
                       [[v["name"], f"{v['bytes'] / 1024:.1f}", _num(v["accuracy"]),
                         v.get("decision", "passed" if v["passed"] else "failed")] for v in comp["variants"]])),
        ]  # fmt: skip
    else:
        s["Edge variants"] = [("p", "Not compressed yet: `fedready compress RUN` builds and gates edge variants.")]
    s["Known limitations"] = [("ul", [
        *d.get("caveats", []),
        "Small groups have few rows: their metrics are uncertain (see the intervals); a gate they cannot decide is "
        "reported as undecided.",
        "Federated counts describe the clients' validation splits, not their training data, and carry the noise each "
        "client added (unless --exact-evaluation, which is outside the guarantee).",
        "Differential privacy protects records in clients' training data, not the benchmark or validation rows.",
        "Post-processing uses the protected attribute at decision time and randomises some decisions.",
        "Counterfactuals change one or two actionable columns independently (two columns that encode the same "
        "thing are not kept consistent) and say what moves the model, not what is feasible for a person.",
    ])]  # fmt: skip
    return [(k, s[k]) for k in SECTIONS]


def render_markdown(r: dict[str, Any], sections: list[tuple[str, list[Block]]]) -> str:
    """Markdown card (figures are referenced by title; the HTML card embeds them)."""
    out = [f"# Model card: {r['run_id']}", ""]
    for title, blocks in sections:
        out += [f"## {title}", ""]
        for kind, body in blocks:
            if kind == "p":
                out += [body, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in body] + [""]
            elif kind == "table":
                head, rows = body
                out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
            elif kind == "img":
                out += [f"*Figure: {body[0]} (embedded in model_card.html)*", ""]
    return "\n".join(out)


def render_html(r: dict[str, Any], sections: list[tuple[str, list[Block]]]) -> str:
    """Self-contained HTML card: inline CSS, every plot a base64 PNG data URI."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>Model card: {e(r['run_id'])}</title>",
           "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
           "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
           "text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}"
           "img{max-width:100%}.fail{color:#b00;font-weight:bold}.pass{color:#070}</style></head><body>",
           f"<h1>Model card: {e(r['run_id'])}</h1>"]  # fmt: skip
    for title, blocks in sections:
        out.append(f"<h2>{e(title)}</h2>")
        for kind, body in blocks:
            if kind == "p":
                out.append(f"<p>{e(body)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in body) + "</ul>")
            elif kind == "table":
                head, rows = body
                cells = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
                for row in rows:
                    tds = []
                    for c in row:
                        cls = ' class="fail"' if c.startswith("FAIL") else ' class="pass"' if c == "pass" else ""
                        tds.append(f"<td{cls}>{e(c)}</td>")
                    cells.append("<tr>" + "".join(tds) + "</tr>")
                out.append("<table>" + "".join(cells) + "</table>")
            elif kind == "img":
                alt, png = body
                out.append(f'<figure><img alt="{e(alt)}" src="data:image/png;base64,'
                           f'{base64.b64encode(png).decode()}"><figcaption>{e(alt)}</figcaption></figure>')  # fmt: skip
    out.append("</body></html>")
    return "\n".join(out)


def refresh_model_card(run_dir: Path) -> bool:
    """Write an evaluated run's model card again, from ``evaluation.json`` and, when the run was compressed,
    ``compression/compression.json`` (its "Edge variants" section). False when the run has no evaluation."""
    run_dir = Path(run_dir)
    evaluation = run_dir / "evaluation.json"
    if not evaluation.exists():
        return False
    card = json.loads(evaluation.read_text(encoding="utf-8"))
    compression = run_dir / "compression" / "compression.json"
    if compression.exists():
        comp = json.loads(compression.read_text(encoding="utf-8"))
        card["compression"] = {"selected": comp.get("selected"), "variants": comp.get("variants", [])}
    write_model_card(card, run_dir)
    return True


def write_model_card(report: dict[str, Any], run_dir: Path) -> tuple[Path, Path]:
    """Write ``model_card.md`` and ``model_card.html`` into ``run_dir`` (with its privacy audits, if any)."""
    report = {**report, "empirical_privacy": read_audits(run_dir)}
    sections = build_sections(report)
    md, page = run_dir / "model_card.md", run_dir / "model_card.html"
    atomic_write_text(md, render_markdown(report, sections) + "\n")
    atomic_write_text(page, render_html(report, sections) + "\n")
    return md, page


def record_audit(report: dict[str, Any], folder: Path) -> Path:
    """Write ``report`` into ``folder/audit_privacy.json`` (whole, keeping the other level's audit).

    When the folder holds an evaluation (``evaluation.json``), its model card is written again so it
    carries the "empirical privacy" line.
    """
    path = folder / AUDIT_FILE
    doc = {"format": AUDIT_FORMAT, "audits": {**read_audits(folder), report["level"]: report}}
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    refresh_model_card(folder)  # an evaluated run's card gains its "empirical privacy" line
    return path
