"""Train a scene classifier (the source's Net or a torchvision backbone) on a folder-per-class image
set (AID's layout) and write an AID-XAI model file.

Images come from `datasets.image_folder`, loaded as the raster path loads tiles. The validation
split is stratified and, like every random choice here (weights, shuffling, augmentation), fixed by
the seed.

The model file holds the best epoch by validation macro-F1 (its provenance says which, and how many
epochs ran). It is written once, at the end, atomically: a failed or cancelled run leaves none. With
`checkpoints=True` it is also rewritten after every epoch, and a hidden training state (weights,
optimizer, history; `training_checkpoint`) beside it lets `resume=True` continue an interrupted run
where it stopped. The learning-rate schedule is `schedule`'s, the metrics files `training_metrics`'.
"""

import dataclasses
import os
import time

import numpy as np

from ..common.atomic import check_writable
from ..common.errors import AidXaiError
from ..common.failures import out_of_memory_as_error
from ..common.progress import Progress
from .datasets import augment_batch, band_statistics, image_folder, stratified_split
from .metrics import summarize
from .model_file import ModelInfo, now_iso, save_model
from .net_geometry import MIN_INPUT_SIZE
from .schedule import learning_rate_scheduler
from .torchvision_models import TORCHVISION_ARCHITECTURES, head_prefixes, load_initial_weights
from .training_checkpoint import TrainingState, resume_training, save_training_state, training_state_path
from .training_metrics import write_metrics

STATISTICS_SHARE = 0.05  # of the progress bar: the mean/std pass before training


ARCHITECTURES = ("Net",) + TORCHVISION_ARCHITECTURES
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
MIN_TORCHVISION_INPUT_SIZE = 32  # five stride-2 stages: smaller inputs vanish before the head


@dataclasses.dataclass
class TrainingConfig:
    dataset: str
    output: str
    architecture: str = "Net"  # the source's Net or one of TORCHVISION_ARCHITECTURES
    init_weights: str = None  # a downloaded torchvision/timm-style state dict to start from
    input_size: int = 256
    validation_fraction: float = 0.10
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov momentum 0.9)
    schedule: str = "constant"  # constant | cosine (to zero at the last epoch), after the warm-up
    warmup_epochs: float = 0.0  # linear warm-up from ~0 to the learning rate
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    freeze_epochs: int = 0  # train only the head for the first epochs (useful with initial weights)
    balanced_sampling: bool = False  # draw each class equally often
    early_stopping: int = 0  # stop after this many epochs without a better validation macro-F1; 0 = never
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    checkpoints: bool = False  # save the best model so far and the training state after every epoch
    resume: bool = False  # continue the checkpointed run that wrote `output`
    metrics_path: str = None  # JSON summary; a per-epoch CSV is written beside it


def _check_config(config):
    if config.architecture not in ARCHITECTURES:
        raise AidXaiError(f"Unknown architecture '{config.architecture}'; use one of: {', '.join(ARCHITECTURES)}.")
    minimum = MIN_INPUT_SIZE if config.architecture == "Net" else MIN_TORCHVISION_INPUT_SIZE
    if config.input_size < minimum:
        raise AidXaiError(f"Input size {config.input_size} is too small: {config.architecture} needs at least {minimum} pixels; use e.g. 64, 128 or 256.")
    if config.optimizer not in OPTIMIZERS or config.schedule not in SCHEDULES:
        raise AidXaiError(f"Optimizer must be one of {', '.join(OPTIMIZERS)} and schedule one of {', '.join(SCHEDULES)}.")
    if not 0 <= config.label_smoothing < 1 or config.weight_decay < 0 or config.warmup_epochs < 0 or config.freeze_epochs < 0 or config.early_stopping < 0:
        raise AidXaiError("Label smoothing must be in [0, 1); weight decay, warm-up, frozen and early-stopping epochs must not be negative.")
    if not 0 < config.validation_fraction < 1:
        raise AidXaiError(f"Validation fraction must be between 0 and 1 (got {config.validation_fraction}); 0.1 keeps 10 % of each class for validation.")
    if config.epochs < 1 or config.batch_size < 1:
        raise AidXaiError(f"Epochs and batch size must be at least 1 (got {config.epochs} and {config.batch_size}).")
    if not config.learning_rate > 0:
        raise AidXaiError(f"Learning rate must be positive (got {config.learning_rate}); 0.001 is a good start for Adam.")
    check_writable(config.output, "model file")
    if config.metrics_path:
        check_writable(config.metrics_path, "metrics file")


def train_model(config, progress=None):
    """Train as `config` says, save the best epoch's model (by validation macro-F1), return its
    validation metrics and the per-epoch history."""
    import torch

    # torch's global RNG draws the initial weights: seed it for this run, then give the process its own back
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), out_of_memory_as_error("training", f"BATCH_SIZE (now {config.batch_size}) or INPUT_SIZE (now {config.input_size})"):
        return _train(config, progress or Progress())


def _train(config, progress):
    import torch
    from torch.utils.data import DataLoader, Subset

    from .classifier import resolve_device
    from .net import build_model  # torch: imported when training, not when the plugin loads

    _check_config(config)
    device = resolve_device(config.device)
    dataset = image_folder(config.dataset, config.input_size)
    class_names = list(dataset.classes)
    if len(class_names) < 2:
        raise AidXaiError(f"Dataset folder '{config.dataset}' has {len(class_names)} class folder(s); a classifier needs at least 2.")
    train_indices, validation_indices = stratified_split(dataset.targets, config.validation_fraction, config.seed, class_names)
    progress.log(
        f"{len(dataset)} images in {len(class_names)} classes: {len(train_indices)} for training, "
        f"{len(validation_indices)} for validation; {config.architecture} at {config.input_size}×{config.input_size} px on {device}"
    )

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    mean, std = band_statistics(dataset, train_indices, progress.part(0.0, STATISTICS_SHARE))
    progress.log(f"Band mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}")
    shape = (1, len(mean), 1, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).reshape(shape)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=device).reshape(shape)

    arguments = model_arguments(config.architecture, len(class_names), config.input_size, len(mean))
    model = build_model(config.architecture, arguments)
    if config.init_weights:
        loaded, skipped = load_initial_weights(model, config.init_weights, config.architecture)
        progress.log(f"Initial weights from {config.init_weights}: {loaded} tensors loaded, {skipped} kept at random (e.g. the head for these classes)")
    model.to(device)
    optimizer = make_optimizer(model, config)
    loss_function = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=config.label_smoothing)
    validation_loader = DataLoader(Subset(dataset, validation_indices), batch_size=config.batch_size, shuffle=False, num_workers=0)
    train_targets = np.asarray(dataset.targets)[train_indices]
    batches_per_epoch = -(-len(train_indices) // config.batch_size)
    head = head_prefixes(config.architecture)
    training_progress = progress.part(STATISTICS_SHARE, 1.0)
    steps_per_epoch = batches_per_epoch + len(validation_loader)
    # one generator each for the batch order and the augmentation, seeded as in every earlier version
    # (same seed, same model); a resumed run restores their states
    generators = {"shuffle": torch.Generator().manual_seed(config.seed), "augment": torch.Generator().manual_seed(config.seed + 1)}
    train_loader = _train_loader(dataset, train_indices, train_targets, config, generators["shuffle"])
    state = TrainingState(history=[], best_macro_f1=-1.0, best_epoch=0, best_weights=None)
    resume_path = training_state_path(config.output)
    if config.resume:
        state = resume_training(resume_path, config, model, optimizer, generators, class_names, progress)
    steps_done = len(state.history) * steps_per_epoch
    scheduler = learning_rate_scheduler(optimizer, config, batches_per_epoch, len(state.history))

    def step_done():
        nonlocal steps_done
        steps_done += 1
        training_progress.fraction(min(1.0, steps_done / (config.epochs * steps_per_epoch)))

    def model_info(epochs_completed, scores):
        return ModelInfo(
            architecture=config.architecture,
            arguments=arguments,
            class_names=class_names,
            input_size=config.input_size,
            bands=list(range(1, len(mean) + 1)),
            mean=mean,
            std=std,
            provenance={
                "dataset": os.path.abspath(config.dataset),
                "n_images": len(dataset),
                "n_train": len(train_indices),
                "n_validation": len(validation_indices),
                "validation_fraction": config.validation_fraction,
                "epochs": config.epochs,
                "epochs_completed": epochs_completed,
                "best_epoch": state.best_epoch,
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "optimizer": config.optimizer,
                "schedule": config.schedule,
                "warmup_epochs": config.warmup_epochs,
                "weight_decay": config.weight_decay,
                "label_smoothing": config.label_smoothing,
                "freeze_epochs": config.freeze_epochs,
                "balanced_sampling": config.balanced_sampling,
                "init_weights": os.path.basename(config.init_weights) if config.init_weights else None,
                "seed": config.seed,
                "input_size": config.input_size,
                "augment": config.augment,
                "validation_accuracy": scores["accuracy"],
                "validation_macro_f1": scores["macro_f1"],
                "training_seconds": round(time.perf_counter() - started + state.seconds_before, 1),
                "date": now_iso(),
                "torch": torch.__version__,
            },
        )

    for epoch in range(len(state.history) + 1, config.epochs + 1):
        epoch_started = time.perf_counter()
        frozen = epoch <= config.freeze_epochs and bool(head)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not frozen or name.startswith(head))
        model.train()
        if frozen:
            keep_frozen_normalisation(model, head)
        train_loss, train_correct, seen = 0.0, 0, 0
        for images, targets in train_loader:
            progress.check_cancel()
            if config.augment:
                images = augment_batch(images, generators["augment"])
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad()
            logits = model((images - mean_tensor) / std_tensor)
            loss = loss_function(logits, targets)
            (loss / len(targets)).backward()
            optimizer.step()
            scheduler.step()
            train_loss += loss.item()
            train_correct += int((logits.argmax(dim=1) == targets).sum())
            seen += len(targets)
            step_done()

        scores, validation_loss = _validate(model, validation_loader, mean_tensor, std_tensor, loss_function, device, class_names, progress, step_done)
        row = {
            "epoch": epoch,
            "train_loss": train_loss / seen,
            "train_accuracy": train_correct / seen,
            "val_loss": validation_loss / len(validation_indices),
            "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"],
            "learning_rate": scheduler.get_last_lr()[0],  # at the epoch's end
            "seconds": round(time.perf_counter() - epoch_started, 2),
        }
        state.history.append(row)
        if scores["macro_f1"] > state.best_macro_f1:
            state.improved_epoch = epoch  # early stopping counts from the last strict improvement
        if scores["macro_f1"] >= state.best_macro_f1:  # among equal scores (often 1.0 on easy data) the later, longer-trained epoch
            state.best_macro_f1, state.best_epoch, state.best_scores = scores["macro_f1"], epoch, scores
            state.best_weights = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        progress.log(
            f"Epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} macro-F1 {row['val_macro_f1']:.3f} "
            f"(best {state.best_macro_f1:.3f} at epoch {state.best_epoch}; {row['seconds']:.1f} s{', backbone frozen' if frozen else ''})"
        )
        stop_early = config.early_stopping > 0 and epoch - state.improved_epoch >= config.early_stopping
        if config.checkpoints and epoch < config.epochs and not stop_early:
            state.seconds_before += time.perf_counter() - started
            started = time.perf_counter()
            save_training_state(resume_path, config, model, optimizer, generators, state, class_names)
            save_model(config.output, _with_weights(model, state.best_weights), model_info(epoch, state.best_scores))
        if stop_early:
            progress.log(f"Stopped early: no better validation macro-F1 for {config.early_stopping} epochs.")
            break

    info = model_info(len(state.history), state.best_scores)
    save_model(config.output, _with_weights(model, state.best_weights), info)
    if os.path.exists(resume_path):
        os.remove(resume_path)
    metrics = {
        **state.best_scores,
        "best_epoch": state.best_epoch,
        "val_loss": state.history[state.best_epoch - 1]["val_loss"],
        "history": state.history,
        "seconds": info.provenance["training_seconds"],
        "n_train": len(train_indices),
        "n_validation": len(validation_indices),
        "model": os.path.abspath(config.output),
        "config": dataclasses.asdict(config),
    }
    if config.metrics_path:
        write_metrics(config.metrics_path, metrics)
    progress.log(
        f"Saved {config.output} (epoch {state.best_epoch}, the best by validation macro-F1): accuracy {state.best_scores['accuracy']:.3f}, "
        f"macro-F1 {state.best_scores['macro_f1']:.3f}, {metrics['seconds']:.0f} s"
    )
    return metrics


def model_arguments(architecture, num_classes, input_size, in_bands):
    if architecture == "Net":
        return {"num_classes": num_classes, "input_size": input_size, "in_bands": in_bands}
    return {"num_classes": num_classes, "in_bands": in_bands}


def make_optimizer(model, config):
    import torch

    parameters = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _train_loader(dataset, train_indices, train_targets, config, generator):
    """Batches of (images, targets), each epoch shuffled, or drawn class-balanced (each class equally
    likely, with replacement) when the classes have very different sizes."""
    from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

    subset = Subset(dataset, train_indices)
    if not config.balanced_sampling:
        return DataLoader(subset, batch_size=config.batch_size, shuffle=True, num_workers=0, generator=generator)
    counts = np.bincount(train_targets)
    weights = (1.0 / counts[train_targets]).tolist()
    sampler = WeightedRandomSampler(weights, num_samples=len(train_indices), replacement=True, generator=generator)
    return DataLoader(subset, batch_size=config.batch_size, sampler=sampler, num_workers=0)


def _validate(model, loader, mean_tensor, std_tensor, loss_function, device, class_names, progress, step_done):
    import torch

    model.eval()
    validation_loss, true_labels, predicted_labels = 0.0, [], []
    with torch.inference_mode():
        for images, targets in loader:
            progress.check_cancel()
            images, targets = images.to(device), targets.to(device)
            logits = model((images - mean_tensor) / std_tensor)
            validation_loss += loss_function(logits, targets).item()
            true_labels.append(targets.cpu().numpy())
            predicted_labels.append(logits.argmax(dim=1).cpu().numpy())
            step_done()
    return summarize(np.concatenate(true_labels), np.concatenate(predicted_labels), class_names), validation_loss


def _with_weights(model, weights):
    """A CPU copy of `model` holding `weights` (the best epoch's), leaving the training model as is."""
    import copy

    best = copy.deepcopy(model).cpu()
    best.load_state_dict(weights)
    return best


def keep_frozen_normalisation(model, head):
    """A frozen backbone's normalisation layers in eval mode: in train mode BatchNorm would still move
    its running statistics towards this data set while the weights stay frozen."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not f"{name}.".startswith(head):
            module.eval()
