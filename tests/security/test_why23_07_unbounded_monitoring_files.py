"""Issue 23, Why 7: monitoring files grew without limit and ``monitor`` read them whole.

About 940 bytes per model call went to ``summaries.jsonl`` with no rotation, ``monitor`` read the whole
file into memory, and ``--record-inputs`` stored whatever was sent (one 900 KB categorical value was
accepted). Files now rotate at a size limit, ``monitor`` streams the newest lines first, and recorded
rows keep the schema's columns with each value capped.
"""

from __future__ import annotations

import json

from fedready.monitoring import Recorder, StorageLimits, load_window
from tests.registry.test_edge_attacks import ROW
from tests.security.conftest import cli
from tests.security.test_why05_hostile_http_clients import _post, _raw

LIMITS = StorageLimits(max_file_bytes=64 << 10, keep_files=2, max_value_chars=64)


def _sizes(folder):
    return {p.name: p.stat().st_size for p in folder.iterdir() if not p.name.startswith(".")}


def test_why23_07_summaries_and_inputs_stop_growing_at_their_limit(device):
    predictor = device.predictor()
    recorder = Recorder(device.home, record_inputs=True, limits=LIMITS)
    rows = [{**ROW, "age": str(20 + i % 50)} for i in range(20)]
    results = predictor.predict(rows)
    for _ in range(600):  # 600 model calls: about 560 KB of summaries and 1.2 MB of inputs unbounded
        recorder.record(predictor.schema, rows, results, version=predictor.version, latency=0.001)
    sizes = _sizes(device.home / "monitoring")
    assert set(sizes) == {"summaries.jsonl", "summaries.jsonl.1", "summaries.jsonl.2", "inputs.jsonl",
                          "inputs.jsonl.1", "inputs.jsonl.2"}, sizes  # fmt: skip
    assert all(size <= LIMITS.max_file_bytes for size in sizes.values()), sizes
    window = load_window(device.home, version=predictor.version, rows=500)  # the newest rows, across files
    assert window is not None and window.rows == 500


def test_why23_07_a_900_kb_value_and_extra_keys_are_not_recorded_whole(device, serve, tmp_path):
    server = serve(record_inputs=True)
    huge = {**ROW, "native-country": "Z" * 900_000, **{f"extra-{i}": "x" * 100 for i in range(500)}}
    status, _, _ = _raw(server, _post(json.dumps(huge).encode()))
    assert status == 200  # an unknown country is a valid row: it is predicted, not stored whole
    (line,) = (device.home / "monitoring" / "inputs.jsonl").read_text().splitlines()
    kept = json.loads(line)
    assert len(kept["row"]["native-country"]) == 1024 and kept["cut"] == ["native-country"]
    assert kept["dropped"] == 500 and not any(k.startswith("extra-") for k in kept["row"])
    assert len(line) < 4096


def test_why23_07_monitor_streams_from_the_newest_line_and_stops_at_its_window(device):
    predictor = device.predictor()
    rows = [{**ROW, "age": str(20 + i % 50)} for i in range(100)]
    Recorder(device.home).record(predictor.schema, rows, predictor.predict(rows), version=predictor.version,
                                 latency=0.001)  # fmt: skip
    summaries = device.home / "monitoring" / "summaries.jsonl"
    newest = summaries.read_text()
    # a gigantic, broken history before the newest line: monitor must never need to read it
    summaries.write_text("not json\n" * 200_000 + newest * 3)
    window = load_window(device.home, version=predictor.version, rows=300)
    assert window is not None and window.rows == 300
    code, out = cli("monitor", "--home", device.home, "--window", "300", "--json")
    assert code in (0, 3) and json.loads(out.splitlines()[0])["rows"] == 300, out
    # asked for more than the good lines hold, it reaches the broken line and says where, in one line
    code, out = cli("monitor", "--home", device.home, "--window", "10000")
    assert code == 1 and "line 4 from the end is not JSON" in out and "Traceback" not in out, out
