"""``python -m explainer run`` (the service) and ``score --explain DIR`` (offline); the only place logging
handlers are configured.

The offline studies (faithfulness, evidence, bench, gallery) are ``python -m harness.explainer_studies``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ingest import cli
from ingest.cli import Command, Handler, SubParsers
from ingest.memory import limit_malloc_arenas

logger = logging.getLogger("explainer")


def _add_run(sub: SubParsers) -> Handler:
    from explainer.service import add_run_command

    return add_run_command(sub)


def _add_score(sub: SubParsers) -> Handler:
    from scorer.offline import add_score_arguments, run_score

    p = sub.add_parser("score", help="`scorer score` that also writes each image's Grad-CAM files under DIR")
    add_score_arguments(p)
    p.add_argument(
        "--explain",
        metavar="DIR",
        required=True,
        help="write a Grad-CAM map, overlay and sidecar per scored image under DIR (bucket layout)",
    )

    def run(args: argparse.Namespace) -> int:
        from explainer.offline import FolderExplainer

        return run_score(args, lambda model: FolderExplainer(model, args.explain))

    return run


COMMANDS: list[Command] = [
    _add_run,
    _add_score,
]


def main(argv: list[str] | None = None) -> int:
    # Arenas are capped before the fetch and decode threads start: see ingest/memory.py.
    return cli.main(
        "python -m explainer", "CIFAKE Grad-CAM explainer", COMMANDS, argv, before=limit_malloc_arenas
    )


if __name__ == "__main__":
    sys.exit(main())
