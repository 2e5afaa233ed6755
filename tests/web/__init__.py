"""The request path: the middleware's lifecycle, recording, protocols, hostile input."""
