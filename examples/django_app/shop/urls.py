from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def checkout(request: HttpRequest) -> JsonResponse:
    flow = "new" if request.gate.is_enabled("new_checkout_flow") else "old"
    return JsonResponse({"checkout": flow, "variant": request.gate.variant})


def prometheus(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [
    path("", checkout),
    path("metrics", prometheus),
]
