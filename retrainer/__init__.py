"""CIFAKE retrainer: data pipeline, training, evaluation and the architecture sweep for the scorer's model."""
