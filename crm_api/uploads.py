"""Uploads: a blueprint whose arguments may come from a multipart body (form fields and files
loaded by one schema), and the one route that takes large bodies."""

from __future__ import annotations

import functools
import io
from typing import Any

from flask import current_app, request
from werkzeug.datastructures import CombinedMultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from crm_domain.settings import Settings

from .extensions import Blueprint, Parser


class MultipartParser(Parser):
    """Adds the `multipart` location: the form fields and the files of one multipart body,
    loaded by one schema (and documented as one multipart/form-data request body)."""

    __location_map__ = {**Parser.__location_map__, "multipart": "load_multipart"}

    def load_multipart(self, req: Any, schema: Any) -> Any:
        return CombinedMultiDict([req.files, req.form])


class ImportsBlueprint(Blueprint):
    ARGUMENTS_PARSER = MultipartParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": "multipart/form-data",
    }


def _settings() -> Settings:
    return current_app.extensions["crm_settings"]  # type: ignore[no-any-return]


# Room for what a multipart body holds besides the file: boundaries, part headers (the file
# name) and the small form fields. The file itself may be IMPORT_MAX_BYTES exactly.
MULTIPART_ALLOWANCE = 64 * 1024


def large_upload(func: Any) -> Any:
    """This route alone takes files up to IMPORT_MAX_BYTES (413 above), read under the same
    deadlines as other bodies (the web worker's). The limit is the file's own size: the body may be
    MULTIPART_ALLOWANCE larger (the form fields stay under Flask's MAX_FORM_MEMORY_SIZE).
    Placed under tenant_required: nobody's body is read before their token and organization
    are checked."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = _settings()
        limit = settings.import_max_bytes
        request.max_content_length = limit + MULTIPART_ALLOWANCE
        try:
            # parsed here (and kept for the view's parser) to measure each file; the web
            # worker bounds the body's reads (crm_api.slow_clients)
            if any(_size(upload.stream) > limit for upload in request.files.values()):
                raise RequestEntityTooLarge()
            return func(*args, **kwargs)
        except RequestEntityTooLarge as exc:
            raise RequestEntityTooLarge(
                f"An upload may be at most {limit} bytes ({limit / 2**20:g} MiB)"
            ) from exc

    return wrapper


def _size(stream: Any) -> int:
    size = int(stream.seek(0, io.SEEK_END))
    stream.seek(0)
    return size
