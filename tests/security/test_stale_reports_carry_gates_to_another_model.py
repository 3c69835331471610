"""Attack: a run's model changes after it was judged (resumed and trained on, or files copied between
runs), and `fedready package` would carry the old report's passed gates over to a model nobody judged.
Packaging refuses a report whose model digest is not the run's model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedready.errors import IntegrityError
from fedready.modelio import arrays_digest, load_npz, save_npz
from fedready.registry import generate_keys, package_run
from fedready.registry._demo import write_demo_run


@pytest.mark.parametrize("report", ["evaluation.json", "compression/compression.json"])
def test_a_report_of_another_model_is_refused_and_nothing_is_written(tmp_path, report):
    run = write_demo_run(tmp_path / "run", seed=0)
    key, _ = generate_keys(tmp_path / "keys", name="op")
    arrays = load_npz((run / "model.npz").read_bytes())
    judged = arrays_digest(arrays)
    (run / report).parent.mkdir(parents=True, exist_ok=True)
    (run / report).write_text(json.dumps({"model_digest": judged, "decision": "passed", "passed": True,
                                          "selected": None}))  # fmt: skip
    # the judged model still packages
    package_run(run, key=key, version="1.0.0", out=tmp_path / "ok")
    # then the model changes under the report
    changed = {k: v + np.float32(0.5) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    (run / "model.npz").write_bytes(save_npz(changed))
    with pytest.raises(IntegrityError, match="describes another model") as e:
        package_run(run, key=key, version="1.0.1", out=tmp_path / "art")
    assert "fedready evaluate" in str(e.value) or "fedready compress" in str(e.value)
    assert not (tmp_path / "art" / "1.0.1").exists()
