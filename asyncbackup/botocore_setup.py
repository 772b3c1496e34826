"""What our S3 clients change in botocore, for speed only: each change keeps botocore's
behaviour and says what it saves. ``s3client.open_client`` applies them to every client; the
aiobotocore-only ones (the response parsers) are in ``aiosession.py``, imported only when an
aiobotocore client is made."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from botocore import handlers
from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache


def tune_client(client: Any) -> None:
    """Once the client is made: endpoint resolution cached, 200 errors checked cheaply."""
    _cache_endpoint_resolution(client)
    _check_200_errors_cheaply(client)


class _OrjsonFileLoader(JSONFileLoader):  # type: ignore[misc]
    """botocore's JSON file loader, decoding with orjson: S3's service model and endpoint
    rules and botocore's endpoint data (1.4 MB of JSON) are read for the first client, which
    is then made in 23-32 ms instead of 38-43 ms. botocore decodes into ``OrderedDict``; a
    ``dict`` keeps the same order, and botocore never asks for the type."""

    def _load_file(self, full_path: str, open_method: Callable[..., Any]) -> Any:
        if not os.path.isfile(full_path):  # noqa: PTH113 - botocore's own check
            return None
        with open_method(full_path, "rb") as fp:
            payload = fp.read()
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:  # what orjson refuses (an integer past 64 bits)
            return super()._load_file(full_path, open_method)


class _ModelLoader(Loader):  # type: ignore[misc]
    """botocore's data loader, reading JSON with orjson, less the listing of its 400-odd
    service folders (and a stat of each) that ``load_service_model`` does to check the
    service is one it knows: 13 ms of every start, for ``s3``'s service model and rule set.
    The latest API version is looked up in the service's own folder, as botocore does next;
    only when there is none does the call go to botocore, for its ``UnknownServiceError``."""

    FILE_LOADER_CLASS = _OrjsonFileLoader

    @instance_cache  # type: ignore[untyped-decorator]
    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        if api_version is None:
            try:
                api_version = self.determine_latest_version(service_name, type_name)
            except DataNotFoundError:
                return super().load_service_model(service_name, type_name)
        model = self.load_data(f"{service_name}/{api_version}/{type_name}")
        extras = self._find_extras(service_name, type_name, api_version)
        self._extras_processor.process(model, extras)
        return model


@functools.cache
def _shared_loader() -> Loader:
    return _ModelLoader()


def share_data_loader(core: Any) -> None:
    """One botocore data loader for all our clients (``core``: a botocore session): each
    session otherwise reads and decodes S3's service model and endpoint rules again (70 ms of
    CPU for a second client). Only with the default data path: an ``AWS_DATA_PATH`` or
    ``data_path`` keeps the session's own."""
    if not core.get_config_variable("data_path"):
        core.register_component("data_loader", _shared_loader())


# S3's endpoint rule set declares Key, Prefix and CopySource as parameters but no rule reads
# them; botocore caches endpoint resolution on all parameters, so with a new key on every
# request the cache never hits and the whole rule tree is evaluated each time (17% of the
# event loop's CPU on small objects). botocore drops them itself from boto/botocore#3692 on;
# until aiobotocore allows that release, drop them here - only when the rule set in use
# indeed never references them.
_UNUSED_ENDPOINT_PARAMS = ("Key", "Prefix", "CopySource")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("ref"), str):
            yield node["ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


@functools.cache
def _droppable_endpoint_params() -> tuple[str, ...]:
    try:
        ruleset = _shared_loader().load_service_model("s3", "endpoint-rule-set-1")
    except Exception:  # no rule set to check against: leave botocore as it is
        return ()
    referenced = set(_refs(ruleset.get("rules", [])))
    return tuple(name for name in _UNUSED_ENDPOINT_PARAMS if name not in referenced)


def _cache_endpoint_resolution(client: Any) -> None:
    provider = getattr(getattr(client, "_ruleset_resolver", None), "_provider", None)
    resolve = getattr(provider, "resolve_endpoint", None)
    droppable = _droppable_endpoint_params()
    if provider is None or resolve is None or not droppable:
        return

    def resolve_endpoint(**params: Any) -> Any:
        for name in droppable:
            params.pop(name, None)
        return resolve(**params)

    provider.resolve_endpoint = resolve_endpoint


#: the start of an XML document: declaration, whitespace, the root element's name
_XML_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<([A-Za-z_][\w.-]*)")


def _handle_200_error(operation_model: Any, response_dict: Any, **kwargs: Any) -> None:
    """botocore's check of every S3 answer for an error sent with status 200 (an ``<Error>``
    document, or a body that is not XML at all because it was cut short), without parsing the
    whole body a second time for it: a body that starts with another root element and ends
    with its closing tag is not one. Anything else gets botocore's own check. botocore's
    ElementTree pass was a fifth of a listing's CPU (1,000 keys a page, then parsed again by
    the response parser, which still raises on anything malformed in between)."""
    body = response_dict.get("body") if response_dict else None
    if response_dict and response_dict.get("status_code") == 200 and isinstance(body, bytes):
        root = _XML_ROOT.match(body)
        name = root.group(1) if root else b"Error"
        if name != b"Error" and body.rstrip().endswith(b"</" + name + b">"):
            return
    handlers._handle_200_error(operation_model, response_dict, **kwargs)


def _check_200_errors_cheaply(client: Any) -> None:
    events = client.meta.events
    events.unregister("before-parse.s3.*", handlers._handle_200_error)
    events.register_first("before-parse.s3.*", _handle_200_error)
