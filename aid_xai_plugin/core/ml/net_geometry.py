"""Shape arithmetic of Net, importable without torch (the Processing layer needs it to build forms)."""


def feature_side(input_size):
    """Side of Net's last feature map: three (conv, pool) stages with kernels 5, 3, 3."""
    side = input_size
    for kernel in (5, 3, 3):
        side = (side - kernel + 1) // 2
    return side


MIN_INPUT_SIZE = next(size for size in range(1, 1000) if feature_side(size) >= 1)
