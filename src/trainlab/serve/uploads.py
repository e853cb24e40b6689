"""What a request to the server carries: the uploaded files, bounded, or one refusal.

A POST carries images as multipart/form-data (field `file`, repeatable) or as the raw body
(Content-Type image/* or application/octet-stream). The body is never read past MAX_BODY
bytes, and a request holds at most MAX_FILES files: whatever a client sends, memory stays
bounded. Every refusal is an UploadError: an HTTP status and one sentence."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import collapse_rfc2231_value

from trainlab.analysis.tables import printable

MAX_BODY = 10 * 1024 * 1024  # bytes in one request, all files together
MAX_FILES = 16  # files in one request
MAX_PARTS = 64  # parts of a form, files or not: each costs a header parse
MAX_HEADERS = 8192  # bytes of one part's headers
RAW_TYPES = ("image/", "application/octet-stream")
FIELD = "file"


class UploadError(Exception):
    """A request refused: `status` (HTTP) and one sentence that says what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_length(headers) -> int:
    """The body's length from Content-Length, refused before reading when over MAX_BODY."""
    if headers.get("Transfer-Encoding"):
        raise UploadError(411, "send the upload with a Content-Length (chunked bodies are not accepted)")
    raw = headers.get("Content-Length")
    if raw is None:
        raise UploadError(411, "send the upload with a Content-Length")
    try:
        length = int(raw)
    except ValueError:
        raise UploadError(400, f"Content-Length {printable(raw)[:40]!r} is not a number of bytes") from None
    if length < 0:
        raise UploadError(400, "Content-Length is negative")
    if length > MAX_BODY:
        raise UploadError(413, f"the upload is {length / 2**20:.1f} MB; at most {MAX_BODY // 2**20} MB "
                               "per request: send smaller images or fewer at a time")
    if length == 0:
        raise UploadError(400, "the request has no body: send an image")
    return length


def _name_ok(name: str) -> str:
    # a control character in a file name is never typed by a person: forged, or a broken client
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise UploadError(400, f"the file name {printable(name)[:80]!r} holds control characters: "
                               "rename the file")
    return name[:255]


def files_of(content_type: str, body: bytes, raw_name: str = "(body)") -> list[tuple[str, bytes]]:
    """(file name, bytes) of each uploaded file, in order; an UploadError when there are none,
    too many, or the Content-Type is neither multipart/form-data nor an image's."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        files = _multipart(content_type, body)
    elif kind.startswith(RAW_TYPES):
        files = [(_name_ok(raw_name), body)]
    else:
        raise UploadError(415, f"Content-Type {printable(kind)[:60]!r} is not accepted: send the image as "
                               f"multipart/form-data (field {FIELD!r}) or as the raw body with Content-Type "
                               "image/png, image/jpeg, ... or application/octet-stream")
    if not files:
        raise UploadError(400, f"no file in the form: send the images in the field {FIELD!r}")
    if len(files) > MAX_FILES:
        raise UploadError(413, f"{len(files)} files in one request; at most {MAX_FILES}: send fewer at a time")
    return files


def _boundary(content_type: str) -> bytes:
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    boundary = collapse_rfc2231_value(boundary) if boundary else ""
    if not 1 <= len(boundary) <= 70 or not boundary.isascii() or not boundary.isprintable():
        raise UploadError(400, "the multipart/form-data body has no usable boundary: send it as a browser form does")
    return boundary.encode("ascii")


def _multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """The `file` parts of a form, split on its boundary here (linear in the body: the standard
    library's email parser took minutes on 10 MB of empty parts, and recursed on nested
    multiparts); only each part's few headers go to that parser."""
    delimiter = b"\r\n--" + _boundary(content_type)
    if body.count(delimiter[2:]) > MAX_PARTS:
        raise UploadError(413, f"the form has {body.count(delimiter[2:]) - 1} parts; at most {MAX_PARTS}: "
                               "send fewer files at a time")
    sections = (b"\r\n" + body).split(delimiter)[1:]  # [0]: the preamble
    files, closed = [], False
    for section in sections:
        if section.startswith(b"--"):  # the close delimiter
            closed = True
            break
        line_end = section.find(b"\r\n")
        head_end = section.find(b"\r\n\r\n", line_end, line_end + MAX_HEADERS)
        if line_end < 0 or head_end < 0:
            raise UploadError(400, "a part of the form has no headers (or headers over 8 kB): "
                                   "send it as a browser form does")
        headers = BytesParser(policy=policy.HTTP).parsebytes(section[line_end + 2:head_end + 4], headersonly=True)
        if headers.get_param("name", header="content-disposition") != FIELD:
            continue  # other form fields are not ours to read
        name = headers.get_filename() or f"upload {len(files) + 1}"
        files.append((_name_ok(_text(name)), section[head_end + 4:]))
    if sections and not closed:
        raise UploadError(400, "the form ends before its closing boundary: send it again, whole")
    return files


def _text(name: str) -> str:
    # the parser keeps a raw UTF-8 name (what browsers send) as escaped bytes: decode it
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
