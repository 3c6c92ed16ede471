"""Grad-CAM evidence for the scorer's verdicts: maps, overlays, sidecars, and the service that stores them."""
