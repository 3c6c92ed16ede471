"""The bad-input corpus: one table per input family, each case with the outcome it must have.

* ``submitted``: records on ``images.submitted`` (malformed messages and hostile image bytes), run through
  one streaming scorer by ``tests/integration/test_scorer_badinput.py``;
* ``http``: requests to the intake API and archives given to ``ingest submit``
  (``tests/integration/test_badinput_http.py``);
* ``feedback``: records on ``moderation.feedback`` through one feedback consumer
  (``tests/integration/test_badinput_feedback.py``).

``tests/unit/test_badinput_corpus.py`` checks the table sizes and, without the stack, that every image case's
expectation is what the decoder itself says.
"""
