"""Composition root of audit: settings -> consumer app (engine, inbox, consumer, API) -> server."""

from fastapi import FastAPI

from audit import api, handlers, store
from audit.settings import Settings
from messaging import telemetry
from messaging.app import consumer_app
from messaging.logs import setup_logging
from messaging.runtime import serve
from messaging.settings import load_settings

SERVICE = "audit"


def create_app(settings: Settings) -> FastAPI:
    return consumer_app(
        SERVICE, settings, metadata=store.metadata, handler=handlers.handle, router=api.router
    )


def main() -> None:
    settings = load_settings(Settings, SERVICE)
    setup_logging(SERVICE, settings.log_level)
    telemetry.setup_tracing(SERVICE)
    serve(create_app(settings), settings)
