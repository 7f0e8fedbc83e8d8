"""The synthetic training script: the temperature follows the schedule and the loss falls."""

from dyconv_deploy.samples.train_synthetic import train


def test_loss_falls_while_temperature_anneals(capsys):
    logs = train(epochs=4, steps_per_epoch=4)
    assert [log.temperature for log in logs] == [30.0, 15.5, 1.0, 1.0]
    assert logs[-1].loss < logs[0].loss
    assert "temperature  30.0" in capsys.readouterr().out
