"""``fedready evaluate``: exit 1 naming a failed gate with its value and limit, exit 0 when all pass, exit 2
for a bad policy; the HTML model card renders in headless Chromium with every section."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from fedready.cli import app
from fedready.evaluation.card import SECTIONS

pytestmark = pytest.mark.slow
runner = CliRunner()


def _evaluate(run, policy, *extra):
    # The run's federated counts are already in federated_eval.json for this model digest: no Flower start.
    return runner.invoke(app, ["evaluate", str(run), "--gate", str(policy), *extra], terminal_width=200)


def test_gate_below_measured_value_fails_with_name_value_and_limit(evaluated_run, tmp_path):
    run, report = evaluated_run
    acc = report["metrics"]["accuracy"]
    eod = report["fairness"]["sex"]["equalized_odds_difference"]
    policy = tmp_path / "strict.toml"
    policy.write_text(f"[gates]\nmin_accuracy = {acc - 0.05:.4f}\n"
                      f"[gates.max_equalized_odds_difference]\nsex = {eod / 2:.4f}\n")  # fmt: skip
    result = _evaluate(run, policy)
    assert result.exit_code == 1, result.output
    failed = [ln for ln in result.stderr.splitlines() if ": fail, " in ln]
    assert len(failed) == 1, result.stderr
    # one line: the gate, its outcome, the measured value with its interval, the limit and the source
    assert failed[0].startswith("max_equalized_odds_difference[sex]: fail, ")
    est = report["estimates"]["fairness.sex.equalized_odds_difference"]
    assert est["lo"] > eod / 2 and f"{est['value']:.3f} [{est['lo']:.3f}, {est['hi']:.3f}]" in failed[0]
    assert f"limit {eod / 2:.3f}" in failed[0] and "benchmark" in failed[0]


def test_passing_policy_exits_0(evaluated_run, tmp_path):
    run, report = evaluated_run
    acc = report["metrics"]["accuracy"]
    ece = report["calibration"]["ece"]
    policy = tmp_path / "lenient.toml"
    policy.write_text(f"[gates]\nmin_accuracy = {acc - 0.01:.4f}\nmax_ece = {ece + 0.01:.4f}\nmax_churn = 0.0\n"
                      '[gates.max_flip_rate]\n"missing-occupation" = 1.0\n')  # fmt: skip
    result = _evaluate(run, policy, "--baseline", str(run))  # the same model: no decision changes
    assert result.exit_code == 0, result.output
    assert "max_churn" in result.stdout
    assert "gate failed" not in result.stderr
    assert "min_accuracy" in result.stdout and "pass" in result.stdout


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("[gates]\nmin_acuracy = 0.8\n", "gates.min_acuracy"),
        ("[gates.max_equalized_odds_difference]\nreligion = 0.1\n", "gates.max_equalized_odds_difference.religion"),
        ('[gates.max_flip_rate]\n"gaussian-x" = 0.1\n', "gates.max_flip_rate.gaussian-x"),
        ("[gates]\nmin_accuracy = 'high'\n", "gates.min_accuracy"),
    ],
)
def test_bad_policy_is_one_line_exit_2(evaluated_run, tmp_path, body, field):
    run, _ = evaluated_run
    policy = tmp_path / "bad.toml"
    policy.write_text(body)
    result = _evaluate(run, policy)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0], result.stderr


def test_model_card_has_every_section_and_renders_in_chromium(evaluated_run, tmp_path):
    run, report = evaluated_run
    html = (run / "model_card.html").read_text()
    md = (run / "model_card.md").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html and f"## {title}" in md
    assert html.count("data:image/png;base64,") == 5  # history, groups, reliability, perturbations, importance
    assert "http://" not in html and "https://" not in html  # self-contained
    assert report["data"]["schema_digest"] in md and report["model_digest"] in md
    # every embedded figure is a real, non-blank PNG (whether or not a browser is at hand)
    import base64
    import io
    import re

    from PIL import Image

    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        figure = Image.open(io.BytesIO(base64.b64decode(b64))).convert("L")
        assert figure.size[0] > 100 and figure.size[1] > 100
        assert len(figure.getcolors(maxcolors=1 << 16) or range(21)) > 20, "an embedded figure is (nearly) blank"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # CI installs it (.ci/run); without it the figures above are what is checked
        return
    shot = tmp_path / "card.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", f"file://{run / 'model_card.html'}"],
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    assert shot.exists(), "chromium wrote no screenshot"
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 3000)
    colours = img.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "the screenshot is (nearly) blank"
    assert shot.stat().st_size > 50_000
