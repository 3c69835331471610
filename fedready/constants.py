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
# A client's whole release history (parallel lists): the server's ledger charges what it has not seen
HISTORY_LEVEL = "history-level"  # 0 count, 1 sample (DP-SGD round), 2 query (post-training counts)
HISTORY_ROUND = "history-round"
HISTORY_NOISE = "history-noise"
HISTORY_RATE = "history-rate"
HISTORY_STEPS = "history-steps"
HISTORY_JSON = "history-json"  # the same, as one JSON string (legacy SecAgg+ metrics hold scalars only)
QUERY_NOISE_STD = "query-noise-std"  # std of the Gaussian noise on each summed count of a query answer (0: exact)
QUERY_ACCURACY_NOISE_STD = "query-accuracy-noise-std"  # std of the noise on val-correct and val-wrong (0: exact)
# the post-training query through SecAgg+ (fedready.client.secagg, fedready.server.secagg)
QUERY_SECAGG = "query-secagg"  # in a fit config: this is the query round; answer the summed counts through SecAgg+
QUERY_SHARES = "query-shares"  # t if the summed counts carry a 1/t share of their noise (whole in a sum of >= t); 0
QUERY_SHARE_STD = "query-share-std"  # std of the (discrete Gaussian) noise this client added to each summed count
QUERY_LAYOUT = "query-layout"  # JSON [[key, length], ...]: the layout of the summed vector sent through SecAgg+
HISTORY_SHARES = "history-shares"  # per release: t for a distributed-noise share of the summed counts, else 0

# ConfigRecord keys in a client's reply
REASON = "reason"
DETAIL = "detail"

# Reason codes a client gives when it declines a round
BUDGET_EXHAUSTED = "budget-exhausted"

# ConfigRecord key telling the client which client-side clipping mod applies ("fixed" | "adaptive")
CLIENT_CLIPPING = "fedready.client-clipping"
# MetricRecord key every client sets to 1 under client-level DP: the DP mean must be unweighted
UNIFORM_WEIGHT = "uniform-weight"

# Reasons the server rejects an update before aggregation (written to the audit log)
REJECT_SHAPE = "shape-mismatch"
REJECT_DTYPE = "dtype-mismatch"
REJECT_NON_FINITE = "non-finite"
REJECT_NORM_CLIP = "norm-above-clip-bound"
REJECT_NORM_MEDIAN = "norm-above-round-median"
REJECT_REASONS = (REJECT_SHAPE, REJECT_DTYPE, REJECT_NON_FINITE, REJECT_NORM_CLIP, REJECT_NORM_MEDIAN)

# Federated evaluation: an "evaluate" message carries the model and a query; the client
# answers with per-group confusion counts on its local validation split (never rows).
MODE = "fedready.mode"  # run-config key: absent = train, MODE_EVALUATE = query the clients only
MODE_EVALUATE = "evaluate"
QUERY = "query"
QUERY_GROUP_COUNTS = "group-counts"
COUNTS_PREFIX = "counts/"  # + attribute: flat [tp, fp, tn, fn] per group, in schema order
VAL_CORRECT = "val-correct"  # decisions on the client's validation rows that were right ...
VAL_WRONG = "val-wrong"  # ... and wrong: one row changes exactly one of the two (L2 sensitivity 1)

# Deployment (fedready.deploy): reason codes of a deployed client and its data fingerprint
CONTRACT_VIOLATION = "contract-violation"  # the local data breaks the schema's [contract]
LOCAL_LIMIT = "local-privacy-limit"  # the coordinator asks for more than the client's local limits allow
SECAGG_BELOW_T = "secagg-threshold-below-t"  # the query round's SecAgg+ threshold is below the t a share assumes
SECAGG_ENCODING = "secagg-encoding"  # the query round's clip, levels or weight would not carry integer counts exactly
SCHEMA_DIGEST = "schema-digest"  # ConfigRecord keys of the fingerprint in every deployed reply
DATA_COMMITMENT = "data-commitment"  # sha256(client secret salt + data sha256): provenance without the digest
# node config keys of a deployed SuperNode (set by `fedready client`)
NODE_DATA = "data-path"
NODE_SCHEMA = "schema-path"
NODE_LIMITS = "limits-path"
# Reference profile (monitoring): an "evaluate" message with this query is answered with
# histograms of the client's training rows over the schema's bins (never rows).
QUERY_PROFILE = "reference-profile"
# Before round 1 the server asks every client for its schema's digest (public: no privacy cost) and
# refuses, for the whole run, any client whose digest differs from its own.
QUERY_SCHEMA = "schema"
SCHEMA_MISMATCH = "schema-mismatch"
SIMULATION = "fedready.simulation"  # run-config key set by `fedready simulate`: every client shares the task
PROFILE_PREFIX = "profile/"  # + "feature/<name>", "scores", "predictions", "labels", "score-positives"
# Wire log: a file where a client records the keys of every message it sends (node config / env)
NODE_WIRE_LOG = "wire-log"
WIRE_LOG_ENV = "FEDREADY_WIRE_LOG"

LEDGER_FILE = "ledger.json"  # a run folder's privacy ledger (and an organisation's lifetime ledger by default)
