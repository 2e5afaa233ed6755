"""The request path: the one lifecycle every adapter runs (``lifecycle``),
the session cookie (``session``), the current decision (``context``), the
request metrics and spans (``metrics``, ``tracing``) and the ASGI and WSGI
middlewares (``asgi``, ``wsgi``). It imports the gate's front and the
domain, never a store or the gate's insides.
"""
