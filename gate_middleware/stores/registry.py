"""Which store a URL opens: one table from URL scheme to backend.

``PromotionGate.from_url(url, config)`` looks the URL's scheme up here and
calls the backend's opener, so the gate imports no backend: a backend's
module (and its client library) is imported the first time its scheme is
opened. A backend registers its schemes with ``register_store``; the
built-in ones are listed in ``BUILT_IN`` by module path, as Unleash lists
its strategies in one mapping and Argo Rollouts picks a metric provider by
type in one factory.

An opener is called as ``opener(url, config, initial, meter_provider,
**options)`` and returns ``(state_store, window_store)``; ``options`` are the
backend's own keywords (for Redis: ``key_prefix``, ``wait_replicas``,
``transition_timeout``), and an unknown one is a ``ConfigError`` from the
backend.

A backend that can keep the catalog of rollouts added at run time
(``RolloutCatalog``) registers a second opener, ``opener(url, **options)``,
with ``register_catalog`` (the built-in ones in ``BUILT_IN_CATALOGS``); a
``Rollouts`` set opened on a URL whose scheme has none cannot add rollouts
while it runs, and says so.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gate_middleware.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from gate_middleware.domain.config import PromotionConfig
    from gate_middleware.domain.state import GateState
    from gate_middleware.stores.port import RolloutCatalog, StateStore, WindowStore

StoreOpener = Callable[..., "tuple[StateStore, WindowStore]"]
CatalogOpener = Callable[..., "RolloutCatalog"]

#: The built-in backends: scheme -> "module:opener", imported when first used.
BUILT_IN: dict[str, str] = {
    "sqlite": "gate_middleware.stores.sqlite:open_stores",
    "redis": "gate_middleware.stores.redis:shared_stores",
    "rediss": "gate_middleware.stores.redis:shared_stores",
    "unix": "gate_middleware.stores.redis:shared_stores",
    "redis+cluster": "gate_middleware.stores.redis:shared_stores",
    "redis+sentinel": "gate_middleware.stores.redis:shared_stores",
}

#: The built-in catalogs of rollouts added at run time, as ``BUILT_IN``.
BUILT_IN_CATALOGS: dict[str, str] = {
    "sqlite": "gate_middleware.stores.sqlite:open_catalog",
    "redis": "gate_middleware.stores.redis:open_catalog",
    "rediss": "gate_middleware.stores.redis:open_catalog",
    "unix": "gate_middleware.stores.redis:open_catalog",
    "redis+cluster": "gate_middleware.stores.redis:open_catalog",
    "redis+sentinel": "gate_middleware.stores.redis:open_catalog",
}

_REGISTERED: dict[str, StoreOpener] = {}
_REGISTERED_CATALOGS: dict[str, CatalogOpener] = {}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")  # RFC 3986, as urlsplit reads it


def _check_schemes(schemes: tuple[str, ...]) -> None:
    for scheme in schemes:
        if not isinstance(scheme, str) or not scheme or scheme != scheme.lower() or ":" in scheme:
            raise ConfigError("scheme", scheme, "a lower-case URL scheme without ':'")


def register_store(*schemes: str) -> Callable[[StoreOpener], StoreOpener]:
    """Register an opener for ``schemes`` (a decorator); a registered
    scheme takes precedence over a built-in one of the same name."""
    _check_schemes(schemes)

    def register(opener: StoreOpener) -> StoreOpener:
        for scheme in schemes:
            _REGISTERED[scheme] = opener
        return opener

    return register


def register_catalog(*schemes: str) -> Callable[[CatalogOpener], CatalogOpener]:
    """Register a catalog opener for ``schemes`` (a decorator), as
    ``register_store`` does a store's."""
    _check_schemes(schemes)

    def register(opener: CatalogOpener) -> CatalogOpener:
        for scheme in schemes:
            _REGISTERED_CATALOGS[scheme] = opener
        return opener

    return register


def open_catalog(url: str, **options: Any) -> RolloutCatalog:
    """The catalog of rollouts added at run time kept in the store at
    ``url``; a ``ConfigError`` naming the schemes that have one when its
    scheme has none."""
    scheme = _scheme(url)
    opener = _REGISTERED_CATALOGS.get(scheme)
    if opener is None:
        target = BUILT_IN_CATALOGS.get(scheme)
        if target is None:
            _opener(url)  # an unknown scheme: the same error as for its stores
            raise ConfigError(
                "url",
                f"{scheme}://…",
                "a store that keeps a catalog of rollouts added at run time: one of "
                f"{sorted({*BUILT_IN_CATALOGS, *_REGISTERED_CATALOGS})}",
            )
        module_name, _, name = target.partition(":")
        opener = getattr(importlib.import_module(module_name), name)
    return opener(url, **options)


def schemes() -> list[str]:
    """Every scheme a URL may have, sorted."""
    return sorted({*BUILT_IN, *_REGISTERED})


def _scheme(url: object) -> str:
    """``url``'s scheme, lower-case ("" for none), read alone: the rest of a
    malformed URL (``redis://[::1/0``) is the backend's to refuse, with a
    ``ConfigError`` that never shows its password."""
    match = _SCHEME.match(url) if isinstance(url, str) else None
    return match.group(1).lower() if match else ""


def _opener(url: str) -> StoreOpener:
    scheme = _scheme(url)
    opener = _REGISTERED.get(scheme)
    if opener is not None:
        return opener
    target = BUILT_IN.get(scheme)
    if target is None:
        # Only the scheme is shown: the rest of a URL may hold a password.
        raise ConfigError(
            "url", f"{scheme}://…" if scheme else "(no scheme)", f"one of {schemes()}"
        )
    module_name, _, name = target.partition(":")
    opener = getattr(importlib.import_module(module_name), name)
    return opener  # type: ignore[no-any-return]


def open_stores(
    url: str,
    config: PromotionConfig,
    initial: GateState,
    meter_provider: MeterProvider | None = None,
    **options: Any,
) -> tuple[StateStore, WindowStore]:
    """The state and window stores of ``config.name``'s rollout at ``url``."""
    return _opener(url)(url, config, initial, meter_provider, **options)
