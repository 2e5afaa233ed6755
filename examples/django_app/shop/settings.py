"""Settings of the Django example: one middleware entry and GATE_MIDDLEWARE.

The cookie's secret is derived from SECRET_KEY."""

import os

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS = ["gate_middleware.integrations"]  # manage.py check and manage.py gate
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "gate_middleware.integrations.django.GateMiddleware",
]
GATE_MIDDLEWARE = {
    "GATE": "shop.rollout.gate",
    "EXCLUDE_PATHS": ["/metrics"],
}
