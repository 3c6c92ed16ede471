"""What every route of the intake API shares: the application state, its PostgreSQL pool
(``ingest.db.Database``), its metrics and the error body. Its own module so that the routers (``images``,
``review``) and ``app`` do not import each other."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry, Counter, Histogram

from ingest.api.sessions import SessionSigner
from ingest.db import Database
from ingest.intake import Intake, IntakeSettings
from ingest.settings import StackSettings
from ingest.storage import S3Store


@dataclass
class HttpMetrics:
    requests: Counter
    duration: Histogram
    images: Counter
    feedback: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "intake_http_requests_total",
                "HTTP requests",
                ["route", "method", "status"],
                registry=registry,
            ),
            duration=Histogram(
                "intake_http_request_duration_seconds", "HTTP request latency", ["route"], registry=registry
            ),
            images=Counter(
                "intake_images_total",
                "Images handed to the intake, by outcome",
                ["outcome"],
                registry=registry,
            ),
            feedback=Counter(
                "intake_feedback_total", "Moderator labels recorded, by label", ["label"], registry=registry
            ),
        )


@dataclass
class AppState:
    stack: StackSettings
    settings: IntakeSettings
    store: S3Store
    producer: KafkaProducer
    db: Database
    intake: Intake
    signer: SessionSigner
    registry: CollectorRegistry
    metrics: HttpMetrics


def state(request: Request) -> AppState:
    st: AppState = request.app.state.cifake
    return st


def error_body(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)
