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
