"""The HTTP service: the intake API (``/v1``) and the moderators' review console (``/review``)."""
