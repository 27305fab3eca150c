"""The learning-rate schedule: a linear warm-up, then constant or a cosine decay to zero at the last
epoch, set on the optimizer batch by batch."""

import math


def learning_rate_factor(config, epochs_done):
    """The learning rate after `epochs_done` (fractional) epochs, as a multiple of config.learning_rate."""
    if epochs_done < config.warmup_epochs:
        return (epochs_done + 1e-3) / config.warmup_epochs  # starts 1e-3 epochs in, so the first step moves
    if config.schedule != "cosine":
        return 1.0
    span = max(config.epochs - config.warmup_epochs, 1e-9)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epochs_done - config.warmup_epochs) / span)))


def learning_rate_scheduler(optimizer, config, batches_per_epoch, epochs_done=0):
    """A scheduler stepped after every batch, placed after `epochs_done` whole epochs.

    A resumed run places it from its finished epochs instead of saving it, so training states written
    before it existed resume too, and a run resumed with more EPOCHS decays to its new last epoch.
    """
    from torch.optim.lr_scheduler import LambdaLR

    # LambdaLR over the formula, not SequentialLR(LinearLR, CosineAnnealingLR): those switch at whole
    # batches and update recursively, which moved the rate by up to 33 % where a warm-up ends inside an
    # epoch (0.5 epochs of 7 batches) and by 7e-14 over a 25-epoch cosine; this keeps earlier runs'
    # rates bit for bit (within 1 ulp during a warm-up whose length is not a power of two).
    def factor(step):
        return learning_rate_factor(config, step // batches_per_epoch + step % batches_per_epoch / batches_per_epoch)

    for group in optimizer.param_groups:  # what LambdaLR scales; an optimizer restored from a state may lack it
        group.setdefault("initial_lr", config.learning_rate)
    return LambdaLR(optimizer, factor, last_epoch=epochs_done * batches_per_epoch - 1)
