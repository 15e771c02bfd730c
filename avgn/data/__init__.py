"""Data: the embedded audio-visual mixture benchmark, PyTorch datasets and real-dataset adapters."""
