"""create_app(): the lifespan owns the engine, the SES client, the HTTP client and the worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.config import MailBackend, Settings, load_settings
from app.console.router import router as console_router
from app.db import create_engine, create_sessionmaker, warn_if_over_budget
from app.dev.router import router as dev_router
from app.emails.router import missing_text as emails_missing_text
from app.emails.router import router as emails_router
from app.emails.sender import SesSender, open_sender
from app.emails.worker import Worker
from app.erasure.router import router as erasure_router
from app.errors import install_error_handlers
from app.ops.emf import EmfEmitter
from app.ops.health import router as health_router
from app.ops.limits import BodySizeLimit
from app.ops.metrics import router as metrics_router
from app.ops.requests import RequestIdMiddleware
from app.recipients.router import router as recipients_router
from app.recipients.ses_list import SesSuppressionList, retry_removals_forever
from app.reputation.watch import ReputationWatch
from app.retention.service import purge_forever
from app.sns.router import router as sns_router
from app.sns.signature import CertificateStore
from app.status.router import router as status_router
from app.support.router import router as support_router
from app.unsubscribe.links import UnsubscribeLinks
from app.unsubscribe.router import router as unsubscribe_router
from app.webhooks import deliveries as webhook_deliveries
from app.webhooks.dispatcher import WebhookDispatcher
from app.webhooks.router import register_webhooks
from app.webhooks.router import router as webhooks_router

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings | None = app.state.settings
    if settings is None:
        settings = app.state.settings = load_settings()
    engine = create_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    app.state.engine = engine
    app.state.sessionmaker = create_sessionmaker(engine)
    app.state.outbox_wake = asyncio.Event()
    # Chosen once: with no URL, no events are recorded and the hot statements skip them.
    webhook_deliveries.enable(settings.webhook_url is not None)
    stopping = asyncio.Event()
    async with (
        httpx.AsyncClient(timeout=5.0, follow_redirects=False) as http,
        open_sender(settings) as sender,
    ):
        app.state.http = http
        app.state.sns_certificates = CertificateStore(http=http, cert_dir=settings.sns_cert_dir)
        app.state.sender = sender
        app.state.ses_suppression_list = SesSuppressionList(
            sender.client if isinstance(sender, SesSender) else None
        )
        reputation = ReputationWatch(
            engine=engine,
            settings=settings,
            sender=sender,
            http=http,
            on_release=app.state.outbox_wake.set,
        )
        app.state.reputation = reputation
        worker = Worker(
            engine=engine,
            sender=sender,
            settings=settings,
            links=UnsubscribeLinks.of(settings),
            wake=app.state.outbox_wake,
            reputation=reputation,
        )
        app.state.worker = worker
        # The background loops, each its own small module; any replica may run them.
        loops: list[Coroutine[Any, Any, None]] = (
            [
                worker.run(stopping),
                reputation.run(stopping),
                purge_forever(engine, retention_days=settings.retention_days, stopping=stopping),
            ]
            if settings.run_worker
            else []
        )
        if settings.run_worker and app.state.ses_suppression_list.available:
            # Erased addresses SES could not take off its list at the time.
            loops.append(
                retry_removals_forever(
                    engine,
                    app.state.ses_suppression_list,
                    retry_seconds=settings.ses_list_retry_seconds,
                    stopping=stopping,
                )
            )
        if settings.cloudwatch_emf:
            emitter = EmfEmitter(
                namespace=settings.cloudwatch_emf_namespace,
                gauges=reputation.emf_figures if settings.run_worker else None,
            )
            loops.append(emitter.run(stopping))
        # Once, in the background: a database that is away must not delay start-up.
        loops.append(
            warn_if_over_budget(
                engine,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
                processes=settings.db_max_processes,
            )
        )
        tasks = [asyncio.create_task(loop) for loop in loops]
        # Events for the app: their own task, so a slow endpoint never slows the worker.
        if settings.webhook_url is not None and settings.run_worker:
            dispatcher = WebhookDispatcher(engine=engine, settings=settings)
            tasks.append(asyncio.create_task(dispatcher.run(stopping)))
        # What start-up built (botocore's service models, SQLAlchemy's metadata, the routes)
        # lives as long as the process: kept out of the cyclic GC, full collections no longer
        # walk it, which took a few percent of the send path's CPU.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            # Finish the sends in flight before the process goes.
            stopping.set()
            await asyncio.gather(*tasks)
    await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    meta: dict[str, Any] = {
        "title": "tegami",
        "version": "0.1.0",
        "summary": "Transactional mail for PRO WORKS, through Amazon SES.",
        "lifespan": lifespan,
    }
    if settings is None or settings.docs:
        # /docs and /redoc load Swagger UI and ReDoc from the package's files, not from CDNs.
        app = FastAPIOffline(**meta)
    else:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, **meta)
    app.state.settings = settings
    install_error_handlers(app, missing_texts={"/emails/": emails_missing_text})
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestIdMiddleware)
    app.include_router(emails_router)
    # Before the recipients' routes: `/recipients/{email:anytext}` would take `.../why` too.
    app.include_router(support_router)
    app.include_router(recipients_router)
    app.include_router(erasure_router)
    app.include_router(sns_router)
    app.include_router(unsubscribe_router)
    app.include_router(health_router)
    app.include_router(metrics_router)
    app.include_router(status_router)
    app.include_router(webhooks_router)
    if settings is None or settings.console:
        app.include_router(console_router)
    register_webhooks(app.webhooks)
    if settings is not None and settings.mail_backend == MailBackend.MAILBOX:
        app.include_router(dev_router)
    return app
