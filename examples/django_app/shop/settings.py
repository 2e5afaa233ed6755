"""Settings of the Django example: one middleware entry and GATE_MIDDLEWARE."""

import os

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "gate_middleware.integrations.django.GateMiddleware",
]
GATE_MIDDLEWARE = {
    "GATE": "shop.rollout.gate",
    "SECRET": os.environ.get("GATE_SECRET"),
    "EXCLUDE_PATHS": ["/metrics"],
}
