#!/usr/bin/env python
"""Django with gate-middleware.

Run:  python examples/django_app/manage.py runserver 127.0.0.1:8000
Or:   gunicorn -w 4 --chdir examples/django_app shop.wsgi   (four workers, one rollout)
Or:   uvicorn --app-dir examples/django_app shop.asgi:application
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
