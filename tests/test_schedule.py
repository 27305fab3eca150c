"""The learning-rate schedule: warm-up, cosine decay, the rates of earlier versions, and resuming."""

import math
import warnings

import pytest
import torch

from aid_xai_plugin.core.ml.schedule import learning_rate_scheduler
from aid_xai_plugin.core.ml.training import TrainingConfig


def earlier_learning_rate(config, epochs_done):
    """The formula earlier versions set before every batch, at `epoch - 1 + batch / batches_per_epoch`."""
    if epochs_done < config.warmup_epochs:
        return config.learning_rate * (epochs_done + 1e-3) / config.warmup_epochs
    if config.schedule != "cosine":
        return config.learning_rate
    span = max(config.epochs - config.warmup_epochs, 1e-9)
    progress = min(1.0, (epochs_done - config.warmup_epochs) / span)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def rates(config, batches_per_epoch, epochs_done=0, optimizer=None):
    """The rate of every batch from `epochs_done` on, and after the last one, stepped as training steps
    (optimizer, then scheduler; any warning, e.g. about that order, fails)."""
    optimizer = optimizer or torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = learning_rate_scheduler(optimizer, config, batches_per_epoch, epochs_done)
        seen = [optimizer.param_groups[0]["lr"]]
        for _ in range((config.epochs - epochs_done) * batches_per_epoch):
            optimizer.step()
            scheduler.step()
            seen.append(optimizer.param_groups[0]["lr"])
    assert scheduler.get_last_lr() == [seen[-1]]
    return seen


def test_cosine_schedule_warms_up_then_decays_to_zero():
    config = TrainingConfig(dataset="", output="", epochs=10, learning_rate=0.1, schedule="cosine", warmup_epochs=2)
    at = rates(config, batches_per_epoch=4)[::4]  # at whole epochs
    # float64 formulas: the warm-up starts 1e-3 epochs in (so the first step moves), the cosine is
    # cos(π/2) and cos(π) in float64, within a few 2^-52 of 0 and −1
    assert at[0] == pytest.approx(0.1 * 1e-3 / 2, rel=1e-12)
    assert at[1] == pytest.approx(0.1 * 1.001 / 2, rel=1e-12)
    assert at[2] == 0.1 and at[6] == pytest.approx(0.05, rel=1e-12)
    assert at[10] == pytest.approx(0.0, abs=1e-12 * 0.1)


SCHEDULES = [  # (epochs, learning rate, schedule, warm-up epochs, batches per epoch)
    (10, 0.1, "cosine", 2, 4),
    (1, 1e-3, "cosine", 0.5, 7),  # the warm-up ends inside an epoch
    (25, 0.002, "cosine", 1, 113),  # README's AID recipe: 7,199 images in batches of 64
    (4, 1e-3, "cosine", 0, 7),
    (5, 1e-3, "constant", 0, 3),
    (3, 0.01, "constant", 1.3, 10),
    (2, 0.01, "cosine", 5, 3),  # the warm-up outlasts the run
]


@pytest.mark.parametrize("epochs, learning_rate, schedule, warmup, batches", SCHEDULES)
def test_every_batch_gets_the_rate_of_earlier_versions(epochs, learning_rate, schedule, warmup, batches):
    """Bit for bit; during a warm-up whose length is not a power of two the product is rounded once
    more differently, so there within 1 ulp."""
    config = TrainingConfig(dataset="", output="", epochs=epochs, learning_rate=learning_rate, schedule=schedule, warmup_epochs=warmup)
    expected = [earlier_learning_rate(config, step // batches + step % batches / batches) for step in range(epochs * batches + 1)]
    got = rates(config, batches)
    exact = math.log2(warmup).is_integer() if warmup else True
    for step, (rate, earlier) in enumerate(zip(got, expected, strict=True)):
        in_warmup = step / batches < warmup
        assert rate == earlier if exact or not in_warmup else rate == pytest.approx(earlier, rel=2**-52, abs=0), step


@pytest.mark.parametrize("epochs, learning_rate, schedule, warmup, batches", SCHEDULES)
def test_a_resumed_run_continues_the_schedule(epochs, learning_rate, schedule, warmup, batches):
    """Placed from the finished epochs, on an optimizer as restored from a training state of this
    version (which holds the scheduler's `initial_lr`) or of an earlier one (which does not)."""
    config = TrainingConfig(dataset="", output="", epochs=epochs, learning_rate=learning_rate, schedule=schedule, warmup_epochs=warmup)
    whole = rates(config, batches)
    for epochs_done in range(epochs):
        interrupted = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
        scheduler = learning_rate_scheduler(interrupted, config, batches)
        for _ in range(epochs_done * batches):
            interrupted.step()
            scheduler.step()
        saved = interrupted.state_dict()
        for keep_initial_lr in (True, False):
            restored = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
            state = {**saved, "param_groups": [{key: value for key, value in group.items() if keep_initial_lr or key != "initial_lr"} for group in saved["param_groups"]]}
            restored.load_state_dict(state)
            assert rates(config, batches, epochs_done, restored) == whole[epochs_done * batches :]


def test_a_run_resumed_with_more_epochs_decays_to_its_new_last_epoch():
    config = TrainingConfig(dataset="", output="", epochs=6, learning_rate=0.01, schedule="cosine", warmup_epochs=1)
    resumed = rates(config, batches_per_epoch=5, epochs_done=3)
    assert resumed == [earlier_learning_rate(config, step // 5 + step % 5 / 5) for step in range(15, 31)]
    assert resumed[-1] == 0.0
