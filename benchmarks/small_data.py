"""Small own-data tables: the training plan against the default rate, beside a central logistic regression.

    python benchmarks/small_data.py --repeat 2 [--only cancer,synth2]

Five tables that ship with scikit-learn or are generated here (breast cancer, wine, digits as a
table; a 5-class and a weak-signal binary synthetic table), each split 75/25 (stratified, seed 0)
into train.csv and test.csv with a schema drafted by ``fedready schema draft``. For each, the
default ``fedready.simulate`` (epsilon 1, 50 rounds) with ``logreg`` at the default rate 6.0 and
with the training plan (:mod:`fedready.simulations.plan`), alternating, and a non-private
scikit-learn logistic regression on the same rows. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SETS = {"cancer": ("target", 2, None), "wine": ("target", 2, None), "digits": ("target", 3, None),
        "synth5": ("label", 4, "group"), "synth2": ("outcome", 2, "sex")}  # fmt: skip  target, clients, sensitive


def make_sets(folder: Path) -> None:
    import pandas as pd
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    def save(name: str, df: pd.DataFrame) -> None:
        d = folder / name
        d.mkdir(parents=True, exist_ok=True)
        target = SETS[name][0]
        tr, te = train_test_split(df, test_size=0.25, random_state=0, stratify=df[target])
        tr.to_csv(d / "train.csv", index=False)
        te.to_csv(d / "test.csv", index=False)

    b = datasets.load_breast_cancer(as_frame=True).frame
    b["target"] = b["target"].map({0: "malignant", 1: "benign"})
    b.columns = [c.replace(" ", "_") for c in b.columns]
    save("cancer", b)
    w = datasets.load_wine(as_frame=True).frame
    w["target"] = "c" + w["target"].astype(str)
    save("wine", w)
    dg = datasets.load_digits(as_frame=True).frame
    dg["target"] = "d" + dg["target"].astype(str)
    save("digits", dg)
    rng = np.random.default_rng(0)
    n = 3200
    x = rng.normal(size=(n, 6))
    grp, cat = rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]), rng.choice(list("pqrs"), n)
    logits = x @ rng.normal(size=(6, 5)) * 0.8 + (cat[:, None] == "p") * np.array([1, 0, 0, 0, -1])
    y = np.array([f"k{np.argmax(row + rng.gumbel(size=5))}" for row in logits])
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    df["group"], df["kind"], df["label"] = grp, cat, y
    save("synth5", df)
    n = 1000
    x, s = rng.normal(size=(n, 8)), rng.choice(["m", "f"], n)
    z = x[:, :3] @ np.array([1.0, -0.8, 0.5]) - 1.4 + 0.3 * (s == "m")
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-z)), "yes", "no")
    df = pd.DataFrame(x, columns=[f"v{i}" for i in range(8)])
    df["sex"], df["outcome"] = s, y
    save("synth2", df)
    for name, (target, _, sensitive) in SETS.items():
        d = folder / name
        cmd = [sys.executable, "-m", "fedready.cli", "schema", "draft", str(d / "train.csv"), "--target", target,
               "--out", str(d / "schema.toml"), *(["--sensitive", sensitive] if sensitive else [])]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)


def central(d: Path, target: str) -> dict[str, float]:
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    tr, te = pd.read_csv(d / "train.csv"), pd.read_csv(d / "test.csv")
    x = tr.drop(columns=[target])
    cats = [c for c in x if x[c].dtype.kind not in "iuf"]
    ct = ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), cats)], remainder=StandardScaler())
    m = make_pipeline(ct, LogisticRegression(max_iter=2000)).fit(x, tr[target])
    return {"central_lr": float((m.predict(te.drop(columns=[target])) == te[target]).mean()),
            "majority": float(te[target].value_counts(normalize=True).iloc[0])}  # fmt: skip


def run(d: Path, clients: int, planned: bool, out: Path) -> dict[str, float]:
    import fedready

    extra = {} if planned else {"model": "logreg", "lr": 6.0}  # the default rate, as before the plan
    notes: list[str] = []
    r = fedready.simulate(d / "train.csv", d / "schema.toml", test=d / "test.csv", num_clients=clients,
                          out=out, on_note=notes.append, **extra)  # fmt: skip
    cfg = json.loads((r.run_dir / "config.json").read_text())["config"]
    return {"accuracy": r.accuracy, "epsilon": r.summary["epsilon"], "lr": cfg["lr"], "model": cfg["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="small-"))
    make_sets(folder)
    only = [s for s in args.only.split(",") if s] or list(SETS)
    doc = {}
    for name in only:
        target, clients, _ = SETS[name]
        d = folder / name
        row = {"clients": clients, **central(d, target), "default": [], "planned": []}
        for _ in range(args.repeat):
            for planned in (True, False):
                row["planned" if planned else "default"].append(run(d, clients, planned, folder / "runs"))
        doc[name] = row
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
