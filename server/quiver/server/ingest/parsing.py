"""Turn an uploaded file's bytes into plain text.

The type is decided by content first (magic bytes: PDF, zip/DOCX, common binary formats),
then by the file name's extension (HTML, JSON, text and code). Files with an unknown or
missing extension are accepted when their content is text. Every failure is reported as a
`FileProcessingError` whose `code` is one of the public file error codes and whose `message`
tells the user what is wrong with the file.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from quiver.server.core.error_codes import ErrorCode
from quiver.server.ingest.limits import (
    MAX_DOCX_XML_BYTES,
    MAX_PDF_OBJECTS,
    MAX_PDF_PAGES,
    UNLIMITED,
    WorkerLimits,
)

MAX_DOCX_UNCOMPRESSED_BYTES = MAX_DOCX_XML_BYTES
MAX_DOCX_MEMBERS = 10_000
# Ratio (uncompressed / compressed) above which a large DOCX is treated as a zip bomb;
# real Word XML compresses about 5-30x.
MAX_DOCX_COMPRESSION_RATIO = 200
_RATIO_CHECK_MIN_BYTES = 16 * 1024 * 1024

# Share of control characters above which content is considered binary rather than text.
_MAX_CONTROL_SHARE = 0.10
_SNIFF_BYTES = 8192

TEXT_EXTENSIONS = frozenset(
    {
        ".txt", ".md", ".markdown", ".rst", ".csv", ".log",
        ".py", ".js", ".ts", ".go", ".java", ".c", ".h", ".cpp", ".rs", ".rb", ".php",
        ".sh", ".sql", ".yaml", ".yml", ".toml", ".ini", ".css",
    }
)  # fmt: skip
JSON_EXTENSIONS = frozenset({".json"})
HTML_EXTENSIONS = frozenset({".html", ".htm"})

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_BINARY_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x7fELF", "elf"),
    (b"\x00asm", "wasm"),
    (b"SQLite format 3\x00", "sqlite"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy office (ole2)"),
    (b"OggS", "ogg"),
    (b"fLaC", "flac"),
    (b"ID3\x03", "mp3"),
    (b"ID3\x04", "mp3"),
)
# (byte-order mark, codec, label)
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8", "UTF-8"),
    (b"\xff\xfe", "utf-16-le", "UTF-16"),
    (b"\xfe\xff", "utf-16-be", "UTF-16"),
)
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v\b\x1b")
_C0_CONTROL_BYTES = bytes(b for b in [*range(0x20), 0x7F] if chr(b) not in _ALLOWED_CONTROLS)


class FileProcessingError(Exception):
    """A file could not be turned into text; `code` is a public file error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)  # both in args, so it pickles across processes
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def parse_document(data: bytes, filename: str, limits: WorkerLimits = UNLIMITED) -> str:
    """Return the text of a document; raise FileProcessingError when that is not possible.

    ``limits`` are those of the worker that parses: the size caps follow from its memory.
    MemoryError propagates (the worker reports it, naming its memory limit)."""
    if not data:
        raise FileProcessingError(ErrorCode.INVALID_FILE, "file is empty")
    ext = os.path.splitext(filename)[1].lower()
    try:
        text = _parse(data, ext, limits)
    except (FileProcessingError, MemoryError):
        raise
    except Exception as exc:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, f"could not parse the file: {_describe(exc)}"
        ) from exc
    check_text_size(len(text), limits)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise FileProcessingError(ErrorCode.INVALID_FILE, "file has no text")
    return text


def check_text_size(chars: int, limits: WorkerLimits, *, at_least: bool = False) -> None:
    """A file's text above the cap that follows from the worker's memory fails."""
    if chars > limits.max_text_chars:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"the file's text is {'at least ' if at_least else ''}{chars:,} characters; "
            f"with {limits.memory_hint()} the "
            f"server indexes at most {limits.max_text_chars:,} per file "
            "(split it into several files)",
        )


def _parse(data: bytes, ext: str, limits: WorkerLimits) -> str:
    if data.startswith(b"%PDF-") or (ext == ".pdf" and b"%PDF-" in data[:1024]):
        return _parse_pdf(data, limits)
    if data.startswith(_ZIP_MAGICS):
        return _parse_zip(data, ext, limits)
    for magic, kind in _BINARY_MAGICS:
        if data.startswith(magic):
            raise _unsupported_binary(kind)
    if ext == ".pdf":
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, "file is named .pdf but is not a PDF (no %PDF- header)"
        )
    if ext == ".docx":
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, "file is named .docx but is not a DOCX (not a zip archive)"
        )
    # No encoding takes more than 4 bytes per character: a file that is surely too long is
    # refused before decoding it.
    check_text_size(len(data) // 4, limits, at_least=True)
    text = _decode_text(data)
    if ext in HTML_EXTENSIONS or (ext not in TEXT_EXTENSIONS | JSON_EXTENSIONS and _is_html(text)):
        return html_to_text(text)
    if ext in JSON_EXTENSIONS:
        _check_json(text)
    return text


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _unsupported_binary(kind: str) -> FileProcessingError:
    return FileProcessingError(
        ErrorCode.UNSUPPORTED_FILE,
        f"binary content of type '{kind}' is not a supported document type",
    )


# --- text -------------------------------------------------------------------------------


def _decode_text(data: bytes) -> str:
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            return _reject_binary_text(_decode(data, len(bom), codec, label))
    utf16 = _utf16_codec_without_bom(data)
    if utf16 is not None:
        return _reject_binary_text(_decode(data, 0, utf16, "UTF-16"))
    if b"\x00" in data:
        raise FileProcessingError(
            ErrorCode.UNSUPPORTED_FILE,
            "binary content of unknown type (contains NUL bytes) is not a supported document type",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Mis-encoded text (Latin-1, cp1252 ...) has almost no C0 control bytes; binary has many.
        sample = data[:_SNIFF_BYTES]
        share = 1 - len(sample.translate(None, _C0_CONTROL_BYTES)) / len(sample)
        if share > _MAX_CONTROL_SHARE / 2:
            raise _unsupported_unknown(share) from None
        raise _undecodable(data, exc.start, "UTF-8 or UTF-16", exc.reason) from None
    return _reject_binary_text(text)


def _decode(data: bytes, skip: int, codec: str, label: str) -> str:
    try:
        return data[skip:].decode(codec)
    except UnicodeDecodeError as exc:
        raise _undecodable(data, skip + exc.start, label, exc.reason) from None


def _undecodable(data: bytes, offset: int, label: str, reason: str) -> FileProcessingError:
    return FileProcessingError(
        ErrorCode.INVALID_FILE,
        f"not valid {label} text (undecodable byte 0x{data[offset]:02x} at offset {offset}: "
        f"{reason})",
    )


def _utf16_codec_without_bom(data: bytes) -> str | None:
    """UTF-16 without a byte-order mark shows as NULs in every other byte (ASCII-heavy text)."""
    sample = data[: _SNIFF_BYTES - _SNIFF_BYTES % 2]
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    even_nuls, odd_nuls = sample[0::2].count(0), sample[1::2].count(0)
    if odd_nuls >= 0.3 * pairs and even_nuls <= 0.05 * pairs:
        return "utf-16-le"
    if even_nuls >= 0.3 * pairs and odd_nuls <= 0.05 * pairs:
        return "utf-16-be"
    return None


def _control_share(text: str) -> float:
    controls = sum(
        1 for ch in text if (ch < " " or "\x7f" <= ch <= "\x9f") and ch not in _ALLOWED_CONTROLS
    )
    return controls / max(1, len(text))


def _unsupported_unknown(share: float) -> FileProcessingError:
    return FileProcessingError(
        ErrorCode.UNSUPPORTED_FILE,
        f"binary content of unknown type ({share:.0%} control characters) "
        "is not a supported document type",
    )


def _reject_binary_text(text: str) -> str:
    if "\x00" in text:
        raise FileProcessingError(
            ErrorCode.UNSUPPORTED_FILE,
            "binary content of unknown type (contains NUL characters) "
            "is not a supported document type",
        )
    share = _control_share(text[:_SNIFF_BYTES])
    if share > _MAX_CONTROL_SHARE:
        raise _unsupported_unknown(share)
    return text


def _check_json(text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except (ValueError, RecursionError) as exc:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, f"invalid JSON: {_describe(exc)}"
        ) from None


# --- HTML -------------------------------------------------------------------------------

_SKIP_TAGS = frozenset({"script", "style", "head", "noscript", "template"})
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
        "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section", "table",
        "tbody", "thead", "tfoot", "tr", "ul", "caption", "summary", "details",
    }
)  # fmt: skip
_CELL_TAGS = frozenset({"td", "th"})


_VOID_BLOCK_TAGS = frozenset({"br", "hr"})  # one line break, not one per start and end


def html_to_text(html: str) -> str:
    """Readable text of an HTML document: no scripts, styles or head; blocks on own lines.

    libxml2 (through lxml) parses in time linear in the input, also on hostile markup (runs
    of unclosed ``<a``, ``<!--``, long attribute lists) that make CPython's
    ``html.parser`` quadratic. Nesting deeper than libxml2's limit ends the parse; the file
    then fails instead of losing its text silently.
    """
    import lxml.html
    from lxml import etree

    parser = lxml.html.HTMLParser(
        remove_comments=True, remove_pis=True, huge_tree=True, no_network=True, encoding="utf-8"
    )
    try:
        root = lxml.html.document_fromstring(html.encode("utf-8"), parser=parser)
    except etree.ParserError:  # nothing but comments, processing instructions or blanks
        return ""
    for error in parser.error_log:
        if error.level == etree.ErrorLevels.FATAL:
            raise FileProcessingError(
                ErrorCode.INVALID_FILE, f"HTML could not be read: {error.message}"
            )
    parts: list[str] = []
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag.lower() if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _SKIP_TAGS:
                walker.skip_subtree()
                continue
            if tag in _BLOCK_TAGS:
                parts.append("\n")
            elif tag in _CELL_TAGS:
                parts.append(" ")
            if element.text:
                parts.append(element.text)
        else:
            if tag in _BLOCK_TAGS and tag not in _VOID_BLOCK_TAGS:
                parts.append("\n")
            if element.tail:
                parts.append(element.tail)
    raw_lines = "".join(parts).split("\n")
    lines = (re.sub(r"[^\S\n]+", " ", line).strip() for line in raw_lines)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _is_html(text: str) -> bool:
    head = text.lstrip()[:100].lower()
    return head.startswith(("<!doctype html", "<html"))


# --- PDF --------------------------------------------------------------------------------


def _parse_pdf(data: bytes, limits: WorkerLimits) -> str:
    from pypdf import PasswordType, PdfReader

    if len(data) > limits.max_pdf_bytes:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"PDF is {len(data):,} bytes; with {limits.memory_hint()} the server reads PDFs "
            f"of at most {limits.max_pdf_bytes:,} bytes",
        )
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise FileProcessingError(
                ErrorCode.INVALID_FILE, "PDF is encrypted (password protected)"
            )
        _check_pdf_objects(reader)
        pages = [page.extract_text() or "" for page in _pdf_pages(reader)]
    except FileProcessingError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, f"PDF is corrupt: {_describe(exc)}"
        ) from exc
    if not pages:
        raise FileProcessingError(ErrorCode.INVALID_FILE, "PDF has no pages")
    text = "\n\n".join(page.strip("\n") for page in pages)
    if not text.strip():
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, "PDF has no extractable text (scanned images?)"
        )
    return text


def _check_pdf_objects(reader: Any) -> None:
    objects = len(reader.xref_objStm) + sum(len(table) for table in reader.xref.values())
    if objects > MAX_PDF_OBJECTS:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"PDF has {objects:,} objects, more than the limit of {MAX_PDF_OBJECTS:,}",
        )


def _pdf_pages(reader: Any) -> Iterator[Any]:
    """The pages in order, walking the page tree with caps: at most MAX_PDF_PAGES pages, and
    no page object listed twice (a tree can repeat one page 100,000 times in a few KB)."""
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject

    root = reader.trailer["/Root"].get_object()
    seen: set[tuple[int, int]] = set()
    stack: list[Any] = [root.get("/Pages")]
    count = 0
    while stack:
        ref = stack.pop()
        if isinstance(ref, IndirectObject):
            key = (ref.idnum, ref.generation)
            if key in seen:
                raise FileProcessingError(
                    ErrorCode.INVALID_FILE,
                    f"PDF page tree lists object {ref.idnum} more than once "
                    "(a repeated page or a loop)",
                )
            seen.add(key)
        node = ref.get_object() if ref is not None else None
        if not isinstance(node, DictionaryObject):
            continue
        kids = node.get("/Kids")
        if node.get("/Type") == "/Pages" or kids is not None:
            kids = kids.get_object() if kids is not None else None
            if isinstance(kids, ArrayObject):
                if len(kids) > MAX_PDF_PAGES:
                    raise _too_many_pages(len(kids))
                stack.extend(reversed(list(kids)))
            continue
        count += 1
        if count > MAX_PDF_PAGES:
            raise _too_many_pages(count)
    # The tree is sound and small: pypdf's own page list (inherited attributes and all).
    yield from reader.pages


def _too_many_pages(count: int) -> FileProcessingError:
    return FileProcessingError(
        ErrorCode.INVALID_FILE,
        f"PDF has {count:,} pages or more, above the limit of {MAX_PDF_PAGES:,}",
    )


# --- zip / DOCX -------------------------------------------------------------------------

_OTHER_ZIP_KINDS = (("xl/workbook.xml", "xlsx"), ("ppt/presentation.xml", "pptx"))


def _parse_zip(data: bytes, ext: str, limits: WorkerLimits) -> str:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:
        if ext == ".docx":
            raise FileProcessingError(
                ErrorCode.INVALID_FILE,
                f"DOCX is corrupt: not a readable zip archive ({_describe(exc)})",
            ) from None
        raise _unsupported_binary("zip") from None
    with archive:
        names = set(archive.namelist())
        if "word/document.xml" not in names:
            if ext == ".docx":
                raise FileProcessingError(
                    ErrorCode.INVALID_FILE, "DOCX is corrupt: the archive has no word/document.xml"
                )
            kind = next((k for name, k in _OTHER_ZIP_KINDS if name in names), "zip")
            raise _unsupported_binary(kind)
        _check_zip_bomb(archive, len(data), limits)
        return _parse_docx(archive)


def _check_zip_bomb(archive: zipfile.ZipFile, archive_size: int, limits: WorkerLimits) -> None:
    """Reject archives that would expand to too much data (zipfile never reads past the
    declared sizes, so checking the declared sizes is enough)."""
    members = archive.infolist()
    if len(members) > MAX_DOCX_MEMBERS:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, f"DOCX has too many parts ({len(members)} > {MAX_DOCX_MEMBERS})"
        )
    total = sum(member.file_size for member in members)
    limit_mb = MAX_DOCX_UNCOMPRESSED_BYTES // (1024 * 1024)
    if total > MAX_DOCX_UNCOMPRESSED_BYTES:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"DOCX expands to {total / 1024 / 1024:.0f} MB, more than the {limit_mb} MB limit "
            "(possible zip bomb)",
        )
    xml = sum(m.file_size for m in members if m.filename.lower().endswith((".xml", ".rels")))
    if xml > limits.max_docx_xml_bytes:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"DOCX holds {xml / 1024 / 1024:.1f} MiB of XML; with {limits.memory_hint()} the "
            f"server reads at most {limits.max_docx_xml_bytes / 1024 / 1024:.1f} MiB of it",
        )
    ratio = total / max(1, archive_size)
    if total >= _RATIO_CHECK_MIN_BYTES and ratio > MAX_DOCX_COMPRESSION_RATIO:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE,
            f"DOCX compression ratio {ratio:.0f}:1 is above {MAX_DOCX_COMPRESSION_RATIO}:1 "
            "(possible zip bomb)",
        )


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_BODY, _W_P, _W_TBL, _W_TR, _W_TC = (_W + t for t in ("body", "p", "tbl", "tr", "tc"))
# Run content as python-docx's Run.text reads it.
_W_RUN_TEXT = {
    _W + "t": None,
    _W + "tab": "\t",
    _W + "ptab": "\t",
    _W + "cr": "\n",
    _W + "noBreakHyphen": "-",
}
_W_R, _W_BR, _W_TYPE = _W + "r", _W + "br", _W + "type"


def _parse_docx(archive: zipfile.ZipFile) -> str:
    """Paragraph texts and table rows (cells joined by tabs, a cell's paragraphs by spaces)
    in document order, read from word/document.xml as a stream: each paragraph and row is
    dropped from the tree once its text is taken, so memory stays that of the text (a DOCX
    with 60 MB of XML took 2.3 GB through python-docx's object tree)."""
    from lxml import etree

    try:
        with archive.open("word/document.xml") as xml:
            return "\n".join(
                _docx_stream(
                    etree.iterparse(
                        xml,
                        events=("start", "end"),
                        tag=(_W_BODY, _W_P, _W_TBL, _W_TR, _W_TC),
                        resolve_entities=False,
                        no_network=True,
                        huge_tree=True,
                    )
                )
            )
    except MemoryError:
        raise
    except Exception as exc:
        raise FileProcessingError(
            ErrorCode.INVALID_FILE, f"DOCX is corrupt: {_describe(exc)}"
        ) from exc


def _docx_stream(events: Any) -> list[str]:
    body: list[str] = []
    # Where finished text goes: the body, or the innermost open cell (a list of its parts);
    # rows collect their cells' texts.
    containers: list[list[str]] = []
    rows: list[list[str]] = []
    in_body = False
    for event, element in events:
        tag = element.tag
        if tag == _W_BODY:
            in_body = event == "start"
            containers = [body] if in_body else []
            continue
        if not in_body:
            continue
        if event == "start":
            if tag == _W_TR:
                rows.append([])
            elif tag == _W_TC:
                containers.append([])
            continue
        if tag == _W_P:
            containers[-1].append(_docx_paragraph_text(element))
        elif tag == _W_TC and len(containers) > 1:
            cell = " ".join(containers.pop()).strip()
            if rows:
                rows[-1].append(cell)
        elif tag == _W_TR and rows:
            containers[-1].append("\t".join(rows.pop()))
        else:
            continue
        # Done with it: free it, and at body level its (emptied) earlier siblings too.
        element.clear()
        if len(containers) == 1:
            parent = element.getparent()
            while element.getprevious() is not None and parent is not None:
                del parent[0]
    return body


def _docx_paragraph_text(paragraph: Any) -> str:
    """The text of the paragraph's runs (also those in hyperlinks, insertions, fields);
    not tab stops or other properties."""
    parts: list[str] = []
    for run in paragraph.iter(_W_R):
        for node in run:
            if node.tag == _W_BR:
                if node.get(_W_TYPE, "textWrapping") == "textWrapping":
                    parts.append("\n")
            elif node.tag in _W_RUN_TEXT:
                fixed = _W_RUN_TEXT[node.tag]
                parts.append(node.text or "" if fixed is None else fixed)
    return "".join(parts)
