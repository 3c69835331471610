from fedready.config import SimulationConfig, make_config


def test_whole_epoch_schedule_survives_the_trip_through_flowers_run_config():
    cfg = make_config(local_steps=0, local_epochs=2)
    back = SimulationConfig.from_run_config(cfg.to_run_config())
    assert back.local_steps == 0 and back.local_epochs == 2
    assert back == cfg
