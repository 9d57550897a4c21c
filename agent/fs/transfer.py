"""File content over plain HTTP: ``GET /download/<path>`` and ``POST /upload``.

Download streams the file in chunks (``files.FileBody``). Upload parses
multipart/form-data as it arrives (``multipart.MultipartParser``) and writes
each file part straight to a temporary file, renamed into place once the
whole body is in (``files.Upload``): memory stays bounded whatever the file
size, and no half-written file is ever visible under its name.

Where an upload goes (``paths.upload_target``): the ``path`` query parameter
(what signed URLs carry: it wins, the signature covers it), else the form
field ``path``, else the part's file name (the SDKs set it to the path as
well). A path that is an existing directory, or ends in "/", receives the
file under its part's file name. The JavaScript SDK sends the ``path`` field
*after* the file, hence the rename at the end rather than writing in place.

Success answers JSON ``{"name", "type": "file", "path"}`` for one file (the
JavaScript SDK reads those three), a list of them for several. Errors answer
the agent's ``{"code", "message"}`` with the statuses the Python SDK maps to
its exceptions (404 NotFound, 400 InvalidArgument, 507 NotEnoughSpace).
"""

from __future__ import annotations

import posixpath
from typing import Any

from agent import users
from agent.auth import DEFAULT_USER, Grant
from agent.fs.errors import FsError
from agent.fs.files import FileBody, Upload, open_download
from agent.fs.multipart import MultipartError, MultipartParser, boundary_of, content_disposition
from agent.fs.paths import download_candidates, resolve
from agent.http import HttpError, Request, Response, error_response, json_response

DOWNLOAD_PREFIX = "/download/"


def fs_error_response(error: FsError) -> Response:
    return error_response(error.http_status, error.code, error.message)


def request_user(request: Request) -> users.User:
    """The user the auth guard selected; HTTP 400 when the sandbox has no such user."""
    grant = request.auth
    name = grant.user if isinstance(grant, Grant) else DEFAULT_USER
    try:
        return users.lookup(name)
    except users.UnknownUser as exc:
        raise HttpError(400, "invalid_argument", str(exc)) from None


async def download(request: Request) -> Response:
    user = request_user(request)
    requested = request.path[len(DOWNLOAD_PREFIX) :]
    grant = request.auth
    try:
        if isinstance(grant, Grant) and grant.signed_path is not None:
            # A signed URL allows the one path form its signature was made for.
            candidates = [resolve(grant.signed_path, user.home)]
        else:
            candidates = download_candidates(requested, user.home)
        with users.acting_as(user):
            fd, path = open_download(candidates)
        body = FileBody(fd, path)
    except FsError as exc:
        return fs_error_response(exc)
    headers = [
        ("content-type", "application/octet-stream"),
        ("content-disposition", content_disposition(posixpath.basename(path))),
    ]
    if body.length is not None:
        headers.append(("content-length", str(body.length)))
    return Response(200, headers=headers, body=body)


async def upload(request: Request) -> Response:
    user = request_user(request)
    query_path = request.query_value("path")
    try:
        parser = MultipartParser(boundary_of(request.header("content-type") or ""))
    except MultipartError as exc:
        return error_response(400, "invalid_argument", str(exc))
    state = Upload(user, query_path)
    try:
        async for chunk in request.body():
            for event in parser.feed(chunk):
                state.on_event(event)
        parser.close()
        written = state.finish()
    except MultipartError as exc:
        return error_response(400, "invalid_argument", str(exc))
    except FsError as exc:
        return fs_error_response(exc)
    finally:
        state.discard()
    body: Any = written[0] if len(written) == 1 else written
    return json_response(200, body)
