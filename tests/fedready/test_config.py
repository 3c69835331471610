from fedready.config import SimulationConfig, make_config


def test_whole_epoch_schedule_survives_the_trip_through_flowers_run_config():
    cfg = make_config(local_steps=0, local_epochs=2)
    back = SimulationConfig.from_run_config(cfg.to_run_config())
    assert back.local_steps == 0 and back.local_epochs == 2
    assert back == cfg


def test_every_option_is_a_flwr_run_config_key_with_the_same_default():
    """`flwr run .` accepts only declared keys: every option is declared, with the default the CLI uses."""
    import tomllib
    from pathlib import Path

    from fedready.config import SimulationConfig

    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    declared = declared["tool"]["flwr"]["app"]["config"]
    fields = {k.replace("_", "-"): f for k, f in SimulationConfig.model_fields.items()}
    assert set(fields) <= set(declared), sorted(set(fields) - set(declared))
    defaults = SimulationConfig.from_run_config(declared)  # what a bare `flwr run .` trains with
    for key in fields:
        if key in ("rounds",):  # `flwr run .` keeps its shorter demo (documented in the README)
            continue
        mine = getattr(defaults, key.replace("-", "_"))
        expected = getattr(SimulationConfig(), key.replace("-", "_"))
        assert mine == expected, f"{key}: pyproject declares {declared[key]!r}, the CLI default is {expected!r}"


def test_every_run_config_key_a_client_reads_is_classified_once():
    from fedready.client.limits import LocalLimits
    from fedready.config import LOOSENING, RUN_CONFIG_EXTRA, RUN_CONFIG_KEYS, SimulationConfig

    assert set(RUN_CONFIG_KEYS) == set(SimulationConfig.model_fields) | set(RUN_CONFIG_EXTRA)
    allows = {f for f in LocalLimits.model_fields if f.startswith("allow_")}
    named = {r.limit for r in RUN_CONFIG_KEYS.values() if r.limit}
    assert allows <= named and named - allows <= {"max_epsilon", "max_delta"}  # every allow_ key is used, and only
    assert {k for k, r in RUN_CONFIG_KEYS.items() if r.kind == LOOSENING} >= {
        "insecure_seeded_noise", "exact_evaluation", "release_train_loss", "dp", "epsilon", "delta"}


def test_a_value_loosens_only_when_it_weakens_the_guarantee():
    from fedready.config import loosened_keys, make_config

    assert loosened_keys(make_config()) == []  # the defaults loosen nothing
    got = [k for k, _ in loosened_keys(make_config(insecure_seeded_noise=True, release_train_loss=True))]
    assert got == ["insecure_seeded_noise", "release_train_loss"]
    assert [k for k, _ in loosened_keys(make_config(dp=False))] == ["dp"]


def test_the_runbook_table_lists_every_key_with_its_kind():
    import re

    from fedready.config import RUN_CONFIG_KEYS
    from tests.docs_text import section

    rows = [line for line in section("Which run-config keys a client takes").splitlines() if line.startswith("| `")]
    listed = {re.match(r"\| `([^`]+)` \| (\w+) \|", r).groups() for r in rows}
    expected = {(k if k in ("run-dir", "fedready.wire-log") else k.replace("_", "-"), r.kind)
                for k, r in RUN_CONFIG_KEYS.items()}  # fmt: skip
    assert listed == expected


def test_an_unknown_keyword_is_named_as_given_with_a_suggestion():
    import pytest

    from fedready.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(num_clientz=3, rounds=0)  # two errors: the misspelt keyword is reported
    assert str(e.value) == "num_clientz: unknown keyword 'num_clientz'; did you mean 'num_clients'?"
    assert e.value.field == "num_clientz"
    with pytest.raises(ConfigError, match="unknown keyword 'zzz'; expected one of: accountant, "):
        make_config(zzz=1)


def test_query_secagg_clip_is_refused_where_flowers_int32_quantiser_would_wrap():
    import pytest

    from fedready.errors import ConfigError

    with pytest.raises(ConfigError, match="^query-secagg-clip: .*1073741824"):
        make_config(secagg=True, query_secagg_clip=2**30)
    assert make_config(secagg=True, query_secagg_clip=2**30 - 1).query_secagg_clip == 2**30 - 1


def test_distributed_noise_configurations_outside_kls_2021_are_refused_before_the_run():
    import pytest

    from fedready.errors import ConfigError

    with pytest.raises(ConfigError, match="^accountant: .*--accountant rdp or --query-local-noise"):
        make_config(secagg=True, accountant="prv")
    assert make_config(secagg=True, accountant="prv", query_distributed_noise=False).accountant == "prv"
    assert make_config(secagg=True, accountant="prv", dp=False).accountant == "prv"  # no noise to charge
    # the least share variance is query_noise^2 / (1 - accuracy share) / t: 0.5^2 / 0.2 / 5 = 0.25 is inside
    assert make_config(secagg=True, query_noise=0.5, query_secagg_threshold=5).query_secagg_threshold == 5
    with pytest.raises(ConfigError, match="^query-secagg-threshold: t = 6 .*--query-noise"):
        make_config(secagg=True, query_noise=0.5, query_secagg_threshold=6)


def test_query_secagg_options_without_secagg_are_refused_not_ignored():
    import pytest

    from fedready.errors import ConfigError

    with pytest.raises(ConfigError, match="^query-secagg-threshold: .*--secagg"):
        make_config(query_secagg_threshold=3)
    with pytest.raises(ConfigError, match="^query-secagg-clip: .*--secagg"):
        make_config(query_secagg_clip=1000)
    back = SimulationConfig.from_run_config(make_config().to_run_config())  # defaults still travel
    assert back.query_secagg_threshold is None
