"""Deterministic training script for the small digits CNN (1x8x8 input).

Run from the repository root:

    python -m sample_models.digits_cnn.train

Writes ``weights.safetensors`` and ``data/{calibration,eval}.npz`` next to this file (the loop, seeds and
optimiser are shared: sample_models/digits_training.py).
"""

from pathlib import Path

from sample_models.digits_training import main
from sample_models.digits_cnn.model import build_model

SIZE = 8
EPOCHS = 50
WEIGHT_DECAY = 5e-4
MAX_SHIFT = 1  # random translation in pixels (zero fill)

if __name__ == "__main__":
    main(build_model, Path(__file__).resolve().parent, size=SIZE, epochs=EPOCHS, weight_decay=WEIGHT_DECAY,
         max_shift=MAX_SHIFT, report_every=10)
