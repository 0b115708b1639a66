"""seepview: review and correct segmentation masks, and retrain the model on your corrections."""

__version__ = "0.1.0"
