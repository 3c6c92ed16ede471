"""CIFAKE retrainer: data, training, evaluation, feedback and gated retraining of the scorer's model."""
