"""Wire keys and reason codes shared by the server, the clients and the tests.

One module so that a renamed key cannot silently desynchronise the two sides.
"""

from __future__ import annotations

# RecordDict keys of train/evaluate messages
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# ConfigRecord keys the server sends with a train instruction
SERVER_ROUND = "server-round"
RUN_DIR = "run-dir"
MODEL_DIGEST = "model-digest"

# MetricRecord keys in a client's reply
NUM_EXAMPLES = "num-examples"  # Flower's default weighting key
PARTITION_ID = "partition-id"
DECLINED = "declined"
TRAIN_LOSS = "train-loss"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
EPSILON = "epsilon"
DELTA = "delta"
REPLAYED = "replayed"  # 1 when a client re-sent an update it had already released

# ConfigRecord keys in a client's reply
REASON = "reason"
DETAIL = "detail"

# Reason codes a client gives when it declines a round
BUDGET_EXHAUSTED = "budget-exhausted"
