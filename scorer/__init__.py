"""CIFAKE scorer: the detector models, their self-describing weights, preprocessing and inference."""
