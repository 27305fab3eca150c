"""Train Net on a folder-per-class image set (AID's layout) and write an AID-XAI model file.

Images come from `datasets.image_folder`, loaded as the raster path loads tiles. The validation
split is stratified and, like every random choice here (weights, shuffling, augmentation), fixed by
the seed.

The model file is written once, at the end, atomically: a failed or cancelled run leaves none. With
`checkpoints=True` the model file is also rewritten after every epoch, so a long run that is
stopped keeps the last finished epoch (its provenance says how many epochs that was).
"""

import csv
import dataclasses
import json
import os
import time

import numpy as np

from ..common.atomic import atomic_output, check_writable
from ..common.errors import AidXaiError
from ..common.progress import Progress
from .datasets import augment_batch, image_folder, stratified_split
from .metrics import confusion_matrix, summarize
from .model_file import ModelInfo, now_iso, save_model
from .net_geometry import MIN_INPUT_SIZE

STATISTICS_SHARE = 0.05  # of the progress bar: the mean/std pass before training


@dataclasses.dataclass
class TrainingConfig:
    dataset: str
    output: str
    input_size: int = 256
    validation_fraction: float = 0.10
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "auto"
    augment: bool = False
    checkpoints: bool = False
    metrics_path: str = None  # JSON summary; a per-epoch CSV is written beside it


def metrics_csv_path(metrics_path):
    """Where the per-epoch CSV goes: beside the JSON, same name with .csv."""
    root, extension = os.path.splitext(metrics_path)
    return (root if extension.lower() == ".json" else metrics_path) + ".csv"


def _check_config(config):
    if config.input_size < MIN_INPUT_SIZE:
        raise AidXaiError(f"Input size {config.input_size} is too small: Net needs at least {MIN_INPUT_SIZE} pixels; use e.g. 64, 128 or 256.")
    if not 0 < config.validation_fraction < 1:
        raise AidXaiError(f"Validation fraction must be between 0 and 1 (got {config.validation_fraction}); 0.1 keeps 10 % of each class for validation.")
    if config.epochs < 1 or config.batch_size < 1:
        raise AidXaiError(f"Epochs and batch size must be at least 1 (got {config.epochs} and {config.batch_size}).")
    if not config.learning_rate > 0:
        raise AidXaiError(f"Learning rate must be positive (got {config.learning_rate}); 0.001 is a good start for Adam.")
    check_writable(config.output, "model file")
    if config.metrics_path:
        check_writable(config.metrics_path, "metrics file")


def band_statistics(dataset, indices, progress, batch_size=64):
    """Per-band mean and std of the training images (float64 sums, one read pass)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=0)
    total = total_squares = None
    pixels = 0
    for batch_index, (images, _) in enumerate(loader):
        progress.check_cancel()
        images = images.to(torch.float64)
        sums, squares = images.sum(dim=(0, 2, 3)), (images * images).sum(dim=(0, 2, 3))
        total = sums if total is None else total + sums
        total_squares = squares if total_squares is None else total_squares + squares
        pixels += images.shape[0] * images.shape[2] * images.shape[3]
        progress.fraction((batch_index + 1) / len(loader))
    mean = total / pixels
    std = torch.sqrt(torch.clamp(total_squares / pixels - mean * mean, min=0.0))
    return mean.tolist(), torch.clamp(std, min=1e-6).tolist()


def train_model(config, progress=None):
    """Train Net as `config` says, save the model file, return validation metrics and history."""
    import torch

    # torch's global RNG draws the initial weights: seed it for this run, then give the process its own back
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return _train(config, progress or Progress())


def _train(config, progress):
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Subset

    from .classifier import resolve_device
    from .net import Net

    _check_config(config)
    device = resolve_device(config.device)
    dataset = image_folder(config.dataset, config.input_size)
    class_names = list(dataset.classes)
    if len(class_names) < 2:
        raise AidXaiError(f"Dataset folder '{config.dataset}' has {len(class_names)} class folder(s); a classifier needs at least 2.")
    train_indices, validation_indices = stratified_split(dataset.targets, config.validation_fraction, config.seed, class_names)
    progress.log(
        f"{len(dataset)} images in {len(class_names)} classes: {len(train_indices)} for training, "
        f"{len(validation_indices)} for validation; {config.input_size}×{config.input_size} px on {device}"
    )

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    mean, std = band_statistics(dataset, train_indices, progress.part(0.0, STATISTICS_SHARE))
    progress.log(f"Band mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}")
    shape = (1, len(mean), 1, 1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=device).reshape(shape)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=device).reshape(shape)

    model = Net(num_classes=len(class_names), input_size=config.input_size, in_bands=len(mean)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_function = nn.CrossEntropyLoss(reduction="sum")
    train_loader = DataLoader(
        Subset(dataset, train_indices), batch_size=config.batch_size, shuffle=True, num_workers=0,
        generator=torch.Generator().manual_seed(config.seed),
    )
    validation_loader = DataLoader(Subset(dataset, validation_indices), batch_size=config.batch_size, shuffle=False, num_workers=0)
    augmentation_generator = torch.Generator().manual_seed(config.seed + 1)
    training_progress = progress.part(STATISTICS_SHARE, 1.0)
    steps_per_epoch = len(train_loader) + len(validation_loader)
    steps_done = 0

    def step_done():
        nonlocal steps_done
        steps_done += 1
        training_progress.fraction(steps_done / (config.epochs * steps_per_epoch))

    def model_info(epochs_completed, scores):
        return ModelInfo(
            architecture="Net",
            arguments={"num_classes": len(class_names), "input_size": config.input_size, "in_bands": len(mean)},
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
                "batch_size": config.batch_size,
                "learning_rate": config.learning_rate,
                "optimizer": "Adam",
                "seed": config.seed,
                "input_size": config.input_size,
                "augment": config.augment,
                "validation_accuracy": scores["accuracy"],
                "validation_macro_f1": scores["macro_f1"],
                "training_seconds": round(time.perf_counter() - started, 1),
                "date": now_iso(),
                "torch": torch.__version__,
            },
        )

    history = []
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        train_loss, train_correct = 0.0, 0
        for images, targets in train_loader:
            progress.check_cancel()
            if config.augment:
                images = augment_batch(images, augmentation_generator)
            images, targets = images.to(device), targets.to(device)
            optimizer.zero_grad()
            logits = model((images - mean_tensor) / std_tensor)
            loss = loss_function(logits, targets)
            (loss / len(targets)).backward()
            optimizer.step()
            train_loss += loss.item()
            train_correct += int((logits.argmax(dim=1) == targets).sum())
            step_done()

        model.eval()
        validation_loss, true_labels, predicted_labels = 0.0, [], []
        with torch.inference_mode():
            for images, targets in validation_loader:
                progress.check_cancel()
                images, targets = images.to(device), targets.to(device)
                logits = model((images - mean_tensor) / std_tensor)
                validation_loss += loss_function(logits, targets).item()
                true_labels.append(targets.cpu().numpy())
                predicted_labels.append(logits.argmax(dim=1).cpu().numpy())
                step_done()
        scores = summarize(
            confusion_matrix(np.concatenate(true_labels), np.concatenate(predicted_labels), len(class_names)), class_names
        )
        row = {
            "epoch": epoch,
            "train_loss": train_loss / len(train_indices),
            "train_accuracy": train_correct / len(train_indices),
            "val_loss": validation_loss / len(validation_indices),
            "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"],
            "seconds": round(time.perf_counter() - epoch_started, 2),
        }
        history.append(row)
        progress.log(
            f"Epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f} macro-F1 {row['val_macro_f1']:.3f} ({row['seconds']:.1f} s)"
        )
        if config.checkpoints and epoch < config.epochs:
            save_model(config.output, model, model_info(epoch, scores))

    info = model_info(config.epochs, scores)
    save_model(config.output, model, info)
    metrics = {
        **scores,
        "val_loss": history[-1]["val_loss"],
        "history": history,
        "seconds": info.provenance["training_seconds"],
        "n_train": len(train_indices),
        "n_validation": len(validation_indices),
        "model": os.path.abspath(config.output),
        "config": dataclasses.asdict(config),
    }
    if config.metrics_path:
        write_metrics(config.metrics_path, metrics)
    progress.log(f"Saved {config.output}: validation accuracy {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}, {metrics['seconds']:.0f} s")
    return metrics


def write_metrics(metrics_path, metrics):
    """The metrics as JSON, and the per-epoch history as CSV beside it (both atomic)."""
    with atomic_output(metrics_path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            json.dump(metrics, stream, indent=2)
    with atomic_output(metrics_csv_path(metrics_path)) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(metrics["history"][0]))
            writer.writeheader()
            writer.writerows(metrics["history"])
