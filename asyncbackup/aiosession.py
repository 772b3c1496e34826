"""The aiobotocore half of our S3 clients, imported only when one is made (``s3client``):
aiobotocore imports aiohttp (75 ms, a third of a start-up: two TLS contexts made at import),
and a run whose requests all take the fast path (``fasts3``) needs none of it."""

from __future__ import annotations

import contextlib
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.parsers import AioResponseParserFactory, AioRestXMLParser
from botocore.model import Shape
from botocore.parsers import ResponseParserError

from .botocore_setup import share_data_loader, tune_client
from .credprocess import bound_credential_processes
from .fasts3.responses import read_timestamp


class Session(aioboto3.Session):  # type: ignore[misc]
    """aioboto3's session without its S3 managed-transfer methods (``upload_file``,
    ``download_fileobj``...) and resource classes: asyncbackup makes its own transfers and
    uses no resources, and adding those methods to the client class imported s3transfer and
    boto3's transfer modules, 22-27 ms of every start."""

    def _register_default_handlers(self) -> None:
        pass


async def open_aio_client(
    stack: contextlib.AsyncExitStack,
    *,
    profile: str | None,
    region: str | None,
    options: dict[str, Any],
    config: dict[str, Any],
) -> Any:
    """An aiobotocore S3 client living as long as ``stack``: ``options`` are
    ``session.client()``'s, ``config`` the ``AioConfig``'s."""
    session = Session(profile_name=profile, region_name=region)
    _use_our_parsers(session)
    share_data_loader(session._session)
    bound_credential_processes(session._session, aio=True)
    client = await stack.enter_async_context(
        session.client("s3", config=AioConfig(**config), **options)
    )
    tune_client(client)
    return client


def _use_our_parsers(session: Any) -> None:
    """Our response parsers (``_RestXMLParser``), with timestamps parsed by ``read_timestamp``
    instead of dateutil: the same datetimes, 60 times cheaper (a listing has a LastModified
    per object: 50 ms of CPU per 2,000 objects, 25 s per million). The parser factory is the
    session's own: only our clients see it."""
    core = getattr(session, "_session", None)  # aioboto3.Session wraps an AioSession
    if core is None:
        return
    factory = _ParserFactory()
    factory.set_parser_defaults(timestamp_parser=read_timestamp)
    core.register_component("response_parser_factory", factory)


class _RestXMLParser(AioRestXMLParser):  # type: ignore[misc]
    """botocore's S3 response parser, with a faster structure parse for the objects of a
    listing (shape ``Object``, 1,000 a page): the same dict, built from a per-shape plan of
    its members and the tags without a regular expression each. It was a third of a
    listing's parse (12-13 ms a page of 1,000 keys, now 8.5-9). Any other structure, or one
    with members this does not do (attributes, headers), is botocore's.

    The plans are the parser's, so they go with its client: each client has shapes of its
    own, and a module-wide cache kept those of every client a long-running program made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: a structure shape -> its plan: (XML tag, member name, member shape) of each member
        self._plans: dict[int, tuple[Shape, list[tuple[str, str, Shape]] | None]] = {}

    async def parse(self, response: dict[str, Any], shape: Shape | None) -> Any:
        """botocore's parse, a field no S3 sends (a listed ``<Size>`` of "abc": botocore's
        ``int()`` raises ValueError) a ``ResponseParserError`` as a garbled document is: a
        failure of the request, asked again, not an unexpected error of the run."""
        try:
            return await super().parse(response, shape)
        except ValueError as exc:
            raise ResponseParserError(f"the server's answer could not be read: {exc}") from exc

    def _handle_structure(self, shape: Shape, node: Any) -> Any:
        plan = self._plan(shape) if shape.name == "Object" else None
        if plan is None or isinstance(node, list):
            return super()._handle_structure(shape, node)
        by_tag: dict[str, Any] = {}
        for child in node:  # as _build_name_to_xml_node: repeated tags become a list
            tag = child.tag.rpartition("}")[2]
            seen = by_tag.get(tag)
            if seen is None:
                by_tag[tag] = child
            elif isinstance(seen, list):
                seen.append(child)
            else:
                by_tag[tag] = [seen, child]
        parsed: dict[str, Any] = {}
        for tag, name, member in plan:
            member_node = by_tag.get(tag)
            if member_node is not None:
                parsed[name] = self._parse_shape(member, member_node)
        return parsed

    def _plan(self, shape: Shape) -> list[tuple[str, str, Shape]] | None:
        known = self._plans.get(id(shape))
        if known is not None and known[0] is shape:
            return known[1]
        plan = self._make_plan(shape)
        self._plans[id(shape)] = (shape, plan)
        return plan

    def _make_plan(self, shape: Shape) -> list[tuple[str, str, Shape]] | None:
        if shape.is_tagged_union or shape.metadata.get("exception", False):
            return None
        plan = []
        for name, member in shape.members.items():
            serialization = member.serialization
            if (
                serialization.get("location")
                or serialization.get("eventheader")
                or serialization.get("xmlAttribute")
            ):
                return None
            plan.append((self._member_key_name(member, name), name, member))
        return plan


class _ParserFactory(AioResponseParserFactory):  # type: ignore[misc]
    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "rest-xml":
            return _RestXMLParser(**self._defaults)
        return super().create_parser(protocol_name)
