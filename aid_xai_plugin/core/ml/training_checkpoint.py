"""The hidden training state beside a checkpointed run's model file, and resuming from it."""

import dataclasses
import json
import os

from ..common.atomic import atomic_output
from ..common.errors import AidXaiError

TRAINING_STATE_FORMAT = "aid-xai-training-state"
# What must match for a run to continue another: the data, the model and the recipe (not the epoch count)
RESUME_KEYS = ("dataset", "architecture", "input_size", "validation_fraction", "batch_size", "learning_rate", "optimizer", "schedule", "warmup_epochs", "weight_decay", "label_smoothing", "freeze_epochs", "balanced_sampling", "seed", "augment", "init_weights")


@dataclasses.dataclass
class TrainingState:
    """What a resumed run needs besides the weights and the optimizer."""

    history: list
    best_macro_f1: float
    best_epoch: int
    best_weights: dict
    best_scores: dict = None
    seconds_before: float = 0.0  # training time of earlier sessions of a resumed run
    improved_epoch: int = 0  # the last epoch whose macro-F1 beat every earlier one


def training_state_path(output):
    """Beside the model file, hidden: `.<name>.training.pt`."""
    folder, name = os.path.split(os.path.abspath(output))
    return os.path.join(folder, f".{name}.training.pt")


def save_training_state(path, config, model, optimizer, generators, state, class_names):
    import torch

    payload = {
        "format": TRAINING_STATE_FORMAT,
        "recipe": json.dumps({key: getattr(config, key) for key in RESUME_KEYS}),
        "class_names": json.dumps(class_names),
        "model": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best_weights": state.best_weights,
        # dropout draws from the generator of the device it runs on: a resumed run continues the same draws
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: generator.get_state() for name, generator in generators.items()},
        "progress": json.dumps({"history": state.history, "best_macro_f1": state.best_macro_f1, "best_epoch": state.best_epoch, "best_scores": state.best_scores, "seconds_before": state.seconds_before, "improved_epoch": state.improved_epoch}),
    }
    with atomic_output(path) as temporary:
        torch.save(payload, temporary)


def resume_training(path, config, model, optimizer, generators, class_names, progress):
    """Load the state a checkpointed run left beside its output into `model`, `optimizer` and the
    batch-order and augmentation `generators`."""
    import pickle

    import torch

    if not os.path.isfile(path):
        raise AidXaiError(
            f"Nothing to resume for '{config.output}': no training state beside it (runs with 'Save the model after every epoch' leave one until they finish). Train without resume."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise AidXaiError(f"The training state '{path}' cannot be read ({str(error).splitlines()[0]}); delete it and train without resume.") from error
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_STATE_FORMAT:
        raise AidXaiError(f"'{path}' is not an AID-XAI training state; delete it and train without resume.")
    recipe = json.loads(payload["recipe"])
    changed = [key for key in RESUME_KEYS if recipe.get(key) != getattr(config, key)]
    if changed or json.loads(payload["class_names"]) != class_names:
        raise AidXaiError(
            f"The interrupted run used other settings ({', '.join(changed) or 'classes'} differ), so it cannot be continued; use the same settings (only EPOCHS may change) or train without resume."
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])  # inside train_model's fork_rng: the process's own states are untouched
    cuda_states = payload.get("cuda_rng") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    for name, generator in generators.items():
        generator.set_state(payload["generators"][name])
    saved = json.loads(payload["progress"])
    state = TrainingState(saved["history"], saved["best_macro_f1"], saved["best_epoch"], payload["best_weights"], saved["best_scores"], saved["seconds_before"], saved["improved_epoch"])
    progress.log(f"Resuming after epoch {len(state.history)} (best macro-F1 {state.best_macro_f1:.3f} at epoch {state.best_epoch}).")
    return state
