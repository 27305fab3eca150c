"""Train and score a classifier (Net by default) on the real AID images, as the source document did, and compare.

The source trained Net on AID with a stratified 10 % validation split and reported accuracy 0.53 and
macro-F1 0.517 on that split. This runs the plugin's own training (same loader, resize and split
code as aid_xai:train) on ../shared/aid150 (8,000 of AID's images at 150×150 px) and prints its
validation scores next to the source's, with the training time.

Full run (slow: tens of minutes of CPU at 128 px):  .venv/bin/python benchmarks/bench_train_aid.py
Smoke test (seconds):  .venv/bin/python benchmarks/bench_train_aid.py --limit-per-class 4 --input-size 32 --epochs 1
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aid_xai_plugin.core.common.progress import Progress  # noqa: E402
from aid_xai_plugin.core.ml.classifier import resolve_device  # noqa: E402
from aid_xai_plugin.core.ml.training import TrainingConfig, train_model  # noqa: E402

SOURCE_ACCURACY = 0.53
SOURCE_MACRO_F1 = 0.517
DEFAULT_DATASET = os.path.join(ROOT, "..", "shared", "aid150")


def limited_copy(dataset, per_class, folder):
    """Link the first `per_class` images (by name) of every class into `folder`, for quick runs."""
    for class_name in sorted(os.listdir(dataset)):
        source = os.path.join(dataset, class_name)
        if not os.path.isdir(source):
            continue
        os.makedirs(os.path.join(folder, class_name))
        for file_name in sorted(os.listdir(source))[:per_class]:
            os.symlink(os.path.join(source, file_name), os.path.join(folder, class_name, file_name))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=DEFAULT_DATASET, help="folder-per-class image set (default: ../shared/aid150)")
    parser.add_argument("--architecture", default="Net", help="Net, resnet18, resnet50, mobilenet_v3_large, efficientnet_b0 or convnext_tiny")
    parser.add_argument("--init-weights", help="a downloaded state dict to start from")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    parser.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--freeze-epochs", type=int, default=0)
    parser.add_argument("--balanced", action="store_true", help="class-balanced sampling")
    parser.add_argument("--early-stopping", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="random flips and 90° rotations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--limit-per-class", type=int, help="use only this many images per class (smoke tests)")
    parser.add_argument("--output", help="model file to keep (default: a temporary file)")
    parser.add_argument("--metrics", help="write the metrics JSON (and per-epoch CSV) here")
    arguments = parser.parse_args()

    import torch

    torch.set_num_threads(arguments.threads)
    if not os.path.isdir(arguments.dataset):
        sys.exit(f"AID images not found at {arguments.dataset}; pass --dataset.")
    with tempfile.TemporaryDirectory(prefix="bench_train_aid_") as scratch:
        dataset = arguments.dataset
        if arguments.limit_per_class:
            dataset = limited_copy(arguments.dataset, arguments.limit_per_class, os.path.join(scratch, "subset"))
        config = TrainingConfig(
            dataset=dataset,
            output=arguments.output or os.path.join(scratch, "aid.aidx.pt"),
            architecture=arguments.architecture,
            init_weights=arguments.init_weights,
            input_size=arguments.input_size,
            validation_fraction=0.10,
            epochs=arguments.epochs,
            batch_size=arguments.batch_size,
            learning_rate=arguments.learning_rate,
            optimizer=arguments.optimizer,
            schedule=arguments.schedule,
            warmup_epochs=arguments.warmup_epochs,
            weight_decay=arguments.weight_decay,
            label_smoothing=arguments.label_smoothing,
            freeze_epochs=arguments.freeze_epochs,
            balanced_sampling=arguments.balanced,
            early_stopping=arguments.early_stopping,
            seed=arguments.seed,
            device=arguments.device,
            augment=arguments.augment,
            metrics_path=arguments.metrics,
        )
        metrics = train_model(config, Progress(log=lambda line: print(line, flush=True)))

    worst = sorted(metrics["per_class"], key=lambda entry: entry["f1"])[:5]
    print()
    print(f"Validation split ({metrics['n_validation']} images, {len(metrics['class_names'])} classes, seed {arguments.seed}), "
          f"{arguments.architecture} at {arguments.input_size} px, {len(metrics['history'])} epochs (best {metrics['best_epoch']}), {arguments.optimizer}/{arguments.schedule}, augment={arguments.augment}:")
    print(f"  {'':10} {'this run':>9} {'source':>7}")
    print(f"  {'accuracy':10} {metrics['accuracy']:9.3f} {SOURCE_ACCURACY:7.3f}")
    print(f"  {'macro-F1':10} {metrics['macro_f1']:9.3f} {SOURCE_MACRO_F1:7.3f}")
    print(f"  training time {metrics['seconds']:.0f} s on {resolve_device(arguments.device)} ({torch.get_num_threads()} CPU threads)")
    print("  weakest classes (F1): " + ", ".join(f"{entry['class_name']} {entry['f1']:.2f}" for entry in worst))
    print(json.dumps({"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "seconds": metrics["seconds"]}))


if __name__ == "__main__":
    main()
