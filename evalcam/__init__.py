"""evalcam: evaluate CAM-style explanation methods the way the Grad-CAM paper did."""

__version__ = "0.1.0"
