from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gate_middleware.integrations.django import gate_decision


async def checkout(request: HttpRequest) -> JsonResponse:
    decision = gate_decision(request)  # request.gate, typed
    flow = "new" if decision.is_enabled("new_checkout_flow") else "old"
    return JsonResponse({"checkout": flow, "variant": decision.variant})


def prometheus(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [
    path("", checkout),
    path("metrics", prometheus),
]
