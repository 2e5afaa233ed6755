"""The behaviour suite's Django URLs (async views; sync streams under WSGI)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

from tests.apps import CHUNK_DELAY, FLAG, PUBLIC_HEADERS, describe


def raw_decision(request: HttpRequest) -> object:
    scope = getattr(request, "scope", None)
    if scope is not None:
        return scope["state"]["gate"]
    return request.META.get("gate_middleware.decision")


async def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(describe(request.gate, raw_decision(request)))  # type: ignore[attr-defined]


async def flag(request: HttpRequest) -> HttpResponse:
    return HttpResponse("new" if request.gate.is_enabled(FLAG) else "old")  # type: ignore[attr-defined]


async def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


async def canary_fails(request: HttpRequest) -> HttpResponse:
    return HttpResponse("x", status=500 if request.gate.is_canary else 200)  # type: ignore[attr-defined]


async def checkout(request: HttpRequest) -> HttpResponse:
    if not request.gate.is_canary:  # type: ignore[attr-defined]
        request.gate.track("checkout_completed")  # type: ignore[attr-defined]
    return HttpResponse("ok")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    if getattr(request, "scope", None) is not None:

        async def achunks() -> AsyncIterator[bytes]:
            for i in range(3):
                await asyncio.sleep(CHUNK_DELAY)
                yield f"chunk{i}\n".encode()

        return StreamingHttpResponse(achunks())

    def chunks() -> Iterator[bytes]:
        for i in range(3):
            time.sleep(CHUNK_DELAY)
            yield f"chunk{i}\n".encode()

    return StreamingHttpResponse(chunks())


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok" if not hasattr(request, "gate") else "routed")


async def item(request: HttpRequest, item_id: str) -> JsonResponse:
    return JsonResponse({"item_id": item_id})


async def public(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the same for everyone", headers=PUBLIC_HEADERS)


def handler500(request: HttpRequest) -> HttpResponse:
    exc = sys.exc_info()[1]
    return HttpResponse(f"handled: {type(exc).__name__}", status=500)


urlpatterns = [
    path("", index),
    path("flag", flag),
    path("boom", boom),
    path("canary-fails", canary_fails),
    path("checkout", checkout),
    path("stream", stream),
    path("healthz", healthz),
    path("items/<str:item_id>", item),
    path("public", public),
]
