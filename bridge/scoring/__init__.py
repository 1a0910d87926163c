"""From tag store to Score: feature windows, the ONNX Detector, the per-model runner and model
updates."""
