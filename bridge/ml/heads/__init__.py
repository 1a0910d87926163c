"""Model heads fitted by ``plcbridge train`` and assembled into ONNX graphs (build time only:
they import onnx and scikit-learn)."""
