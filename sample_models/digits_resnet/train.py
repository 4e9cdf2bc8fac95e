"""Deterministic training script for the residual digits CNN (1x32x32 input).

Run from the repository root:

    python -m sample_models.digits_resnet.train

Writes ``weights.safetensors`` and ``data/{calibration,eval}.npz`` next to this file (the loop, seeds and
optimiser are shared: sample_models/digits_training.py).
"""

from pathlib import Path

from sample_models.digits_training import main
from sample_models.digits_resnet.model import build_model

SIZE = 32
EPOCHS = 10
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2  # pixels at 32x32 (half an original 8x8 pixel)

if __name__ == "__main__":
    main(build_model, Path(__file__).resolve().parent, size=SIZE, epochs=EPOCHS, weight_decay=WEIGHT_DECAY,
         max_shift=MAX_SHIFT, report_every=1)
