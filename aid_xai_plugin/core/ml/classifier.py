"""Batched, device-aware prediction: model-input arrays (N×H×W×C in [0, 1]) → class scores in one
of the output spaces: the model's raw logits, softmax probabilities, log-probabilities, or (for
contrastive explanations) the difference of two classes' logits."""

import numpy as np

from ..common.errors import AidXaiError
from ..common.failures import out_of_memory_as_error

OUTPUT_SPACES = ("logit", "probability", "log_probability", "contrast")


def check_output_space(space):
    if space not in OUTPUT_SPACES:
        raise AidXaiError(f"Unknown output space '{space}'; use one of: {', '.join(OUTPUT_SPACES)}.")
    return space


def outputs_from_logits(logits, space):
    """N×classes float32 numpy scores in `space` from a logit tensor; every engine goes through this
    one function, so they all explain bit-identical model outputs. `contrast` scores are the logits:
    `explained_outputs` takes the differences per tile."""
    import torch

    check_finite_logits(logits)
    if space == "probability":
        logits = torch.softmax(logits, dim=1)
    elif space == "log_probability":
        logits = torch.log_softmax(logits, dim=1)
    else:
        check_output_space(space)
    return logits.float().cpu().numpy()


def explained_outputs(scores, indices, rivals=None):
    """The explained outputs (…×K, float64) of all-class scores (…×classes): the classes `indices`,
    or with `rivals` (OUTPUT_SPACE contrast) score(indices[k]) − score(rivals[k]), subtracted in
    float64 (shap's predict function returns the same float64 differences)."""
    scores = np.asarray(scores, dtype=np.float64)
    if rivals is None:
        return scores[..., indices]
    return scores[..., indices] - scores[..., rivals]


def check_finite_logits(logits):
    """NaN/Inf model outputs must stop the run before anything is written: never a NaN map."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        raise AidXaiError(
            "The model produced NaN or infinite scores for a tile: its weights or normalisation (mean/std) are unusable, or the "
            "input values are extreme; check the model file (retrain it if training diverged) and the SCALING setting."
        )


def resolve_device(name="auto"):
    """'auto' → CUDA when available, else CPU; 'cuda' without a GPU is a clear error."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise AidXaiError("DEVICE is 'cuda' but torch sees no CUDA GPU; use 'auto' or 'cpu', or install a CUDA build of torch.")
    if name not in ("cpu", "cuda"):
        raise AidXaiError(f"Unknown device '{name}'; use auto, cpu or cuda.")
    return name


class Classifier:
    """A loaded model plus its normalisation, callable on channels-last arrays like shap expects."""

    def __init__(self, loaded_model, device="auto"):
        import torch

        self.device = resolve_device(device)
        self.info = loaded_model.info
        self.sha256 = loaded_model.sha256
        self.module = loaded_model.module.to(self.device).eval()
        shape = (1, len(self.info.mean), 1, 1)
        self.mean = torch.tensor(self.info.mean, dtype=torch.float32, device=self.device).reshape(shape)
        self.std = torch.tensor(self.info.std, dtype=torch.float32, device=self.device).reshape(shape)

    @property
    def class_names(self):
        return list(self.info.class_names)

    def logits_nchw(self, batch):
        """Logits for a float tensor batch N×C×H×W in [0, 1] (already on the device)."""
        return self.module((batch - self.mean) / self.std)

    def normalised_chw(self, array_hwc):
        """One H×W×C tile in [0, 1] as the model's C×H×W input on the device (for engines that
        normalise a tile once and then cut windows from it)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array_hwc.transpose(2, 0, 1)))[None].to(self.device)
        return ((tensor - self.mean) / self.std)[0]

    def predict_probabilities(self, images_nhwc, batch_size=64):
        """Softmax probabilities (N×classes, float32) for N×H×W×C arrays in [0, 1]."""
        return self.predict_outputs(images_nhwc, "probability", batch_size)

    def predict_outputs(self, images_nhwc, space, batch_size=64):
        """Scores in `space` (N×classes, float32) for N×H×W×C arrays in [0, 1], in `batch_size` chunks."""
        import torch

        check_output_space(space)
        images_nhwc = np.asarray(images_nhwc, dtype=np.float32)
        outputs = []
        with out_of_memory_as_error(f"running the model on {self.device}", f"BATCH_SIZE (now {batch_size}) or TILE_SIZE"), torch.inference_mode():
            for start in range(0, len(images_nhwc), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(images_nhwc[start : start + batch_size].transpose(0, 3, 1, 2)))
                logits = self.logits_nchw(chunk.to(self.device))
                outputs.append(outputs_from_logits(logits, space))
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(outputs)


def top_k(probabilities, k):
    """Indices of the k largest probabilities per row, most probable first."""
    k = min(k, probabilities.shape[1])
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
