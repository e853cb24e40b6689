"""What a request to the server carries: the uploaded files, bounded, or one refusal.

A POST carries images as multipart/form-data (field `file`, repeatable) or as the raw body
(Content-Type image/* or application/octet-stream). The body is never read past MAX_BODY
bytes, and a request holds at most MAX_FILES files: whatever a client sends, memory stays
bounded. Every refusal is an UploadError: an HTTP status and one sentence."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

from trainlab.analysis.tables import printable

MAX_BODY = 10 * 1024 * 1024  # bytes in one request, all files together
MAX_FILES = 16  # files in one request
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


def _multipart(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    try:
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    except UnicodeEncodeError:
        raise UploadError(400, "the Content-Type header is not plain text") from None
    msg = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart() or not msg.get_param("boundary"):
        raise UploadError(400, "the multipart/form-data body has no boundary: send it as a browser form does")
    files = []
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") != FIELD:
            continue  # other form fields are not ours to read
        if len(files) >= MAX_FILES:  # counted, never decoded
            files.append(("", b""))
            continue
        name = part.get_filename() or f"upload {len(files) + 1}"
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            raise UploadError(400, f"the part {printable(name)[:80]!r} is not a file")
        files.append((_name_ok(str(name)), data))
    return files
