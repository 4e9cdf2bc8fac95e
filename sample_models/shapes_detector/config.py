"""The detector's shape and post-processing settings, shared by the model (model.py) and the app-side
post-processing (postprocess.py) without importing torch."""

NUM_CLASSES = 3
STRIDE = 4
GRID = 16  # 64 / STRIDE
TOP_K = 16  # detections per image, padded
IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.05
