"""Document parsing: type detection, text decoding, HTML/JSON/PDF/DOCX and error codes."""

from __future__ import annotations

import io
import json
import pickle
import random
import time
import zipfile

import docx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter
from quiver.server.core.error_codes import ErrorCode
from quiver.server.ingest.parsing import (
    FileProcessingError,
    parse_document,
)

from tests.conftest import examples
from tests.docgen import make_docx, make_pdf


def _error(data: bytes, filename: str) -> FileProcessingError:
    with pytest.raises(FileProcessingError) as info:
        parse_document(data, filename)
    return info.value


# --- text ---------------------------------------------------------------------------------


def test_utf8_text() -> None:
    assert parse_document("héllo wörld ✓\n".encode(), "notes.txt") == "héllo wörld ✓\n"


def test_utf8_with_bom() -> None:
    data = b"\xef\xbb\xbf" + "café au lait".encode()
    assert parse_document(data, "notes.md") == "café au lait"


@pytest.mark.parametrize(("bom", "codec"), [(b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")])
def test_utf16_with_bom(bom: bytes, codec: str) -> None:
    text = "Grüße aus Köln — 日本語"
    assert parse_document(bom + text.encode(codec), "greeting.txt") == text


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_detected_from_nul_pattern(codec: str) -> None:
    text = "plain ASCII-heavy text written as UTF-16 without a byte-order mark"
    assert parse_document(text.encode(codec), "a.txt") == text


def test_latin1_bytes_are_invalid_with_offset() -> None:
    error = _error("naïve façade".encode("latin-1"), "old.txt")
    assert error.code == ErrorCode.INVALID_FILE
    assert "not valid UTF-8 or UTF-16 text" in error.message
    assert "0xef at offset 2" in error.message


def test_cp1252_smart_quotes_are_invalid_not_binary() -> None:
    data = "\u201cquoted\u201d \u2014 dash \u2026".encode("cp1252") * 20
    error = _error(data, "word-export.txt")
    assert error.code == ErrorCode.INVALID_FILE
    assert "0x93 at offset 0" in error.message


def test_line_endings_normalised() -> None:
    assert parse_document(b"one\r\ntwo\rthree\n", "a.txt") == "one\ntwo\nthree\n"


def test_code_and_unknown_extension_text_accepted() -> None:
    source = b"def f(x: int) -> int:\n    return x + 1\n"
    assert parse_document(source, "mod.py") == source.decode()
    assert parse_document(b"all: build\n", "Makefile") == "all: build\n"


def test_empty_file_is_invalid() -> None:
    error = _error(b"", "empty.txt")
    assert (error.code, error.message) == (ErrorCode.INVALID_FILE, "file is empty")


def test_whitespace_only_is_invalid() -> None:
    error = _error(b"  \n\t \r\n", "blank.txt")
    assert (error.code, error.message) == (ErrorCode.INVALID_FILE, "file has no text")


def test_random_binary_is_unsupported() -> None:
    data = random.Random(42).randbytes(4096)
    error = _error(data, "blob.bin")
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert "binary content" in error.message


def test_binary_without_nul_bytes_is_unsupported() -> None:
    data = random.Random(5).randbytes(4096).replace(b"\x00", b"\x01")
    error = _error(data, "blob.txt")
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert "control characters" in error.message


def test_nul_bytes_in_text_are_unsupported() -> None:
    error = _error(b"looks like text\x00\x00\x00 but is not", "data.txt")
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert "NUL" in error.message


def test_utf16_bom_with_binary_content_is_unsupported() -> None:
    binary = "".join(map(chr, range(32))).encode("utf-16-le") * 8
    error = _error(b"\xff\xfe" + binary, "weird.txt")
    assert error.code == ErrorCode.UNSUPPORTED_FILE


@pytest.mark.parametrize("filename", ["image.png", "image.txt", "noext"])
def test_png_magic_is_unsupported_whatever_the_name(filename: str) -> None:
    error = _error(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 32, filename)
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert error.message == "binary content of type 'png' is not a supported document type"


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"GIF89a\x01\x00", "gif"),
        (b"\x1f\x8b\x08", "gzip"),
    ],
)
def test_other_binary_magics_are_unsupported(data: bytes, kind: str) -> None:
    error = _error(data + b"\x00" * 16, "file.txt")
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert f"'{kind}'" in error.message


# --- JSON and HTML --------------------------------------------------------------------------


def test_valid_json_is_returned_as_text() -> None:
    data = json.dumps({"name": "quiver", "tags": ["a", "b"]}, indent=2).encode()
    assert parse_document(data, "doc.json") == data.decode()


def test_invalid_json_is_invalid() -> None:
    error = _error(b'{"a": 1,}', "doc.json")
    assert error.code == ErrorCode.INVALID_FILE
    assert error.message.startswith("invalid JSON:")
    assert "line 1 column 9" in error.message


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    error = _error(b"[" * 100_000 + b"]" * 100_000, "deep.json")
    assert error.code == ErrorCode.INVALID_FILE


HTML = b"""<!DOCTYPE html>
<html><head><title>Page title</title><style>p { color: red }</style>
<script>var secret = "do not index";</script></head>
<body>
  <h1>Fish &amp; Chips</h1>
  <p>Price:   &euro;5 &lt;cheap&gt;&nbsp;today</p>
  <script type="text/javascript">alert("nope")</script>
  <ul><li>one</li><li>two</li></ul>
  <table><tr><td>cell A</td><td>cell B</td></tr></table>
</body></html>
"""


def test_html_to_text() -> None:
    text = parse_document(HTML, "page.html")
    assert "Fish & Chips" in text
    assert "Price: €5 <cheap> today" in text
    assert "cell A cell B" in text
    for dropped in ("secret", "alert", "color", "Page title", "<p>", "&amp;"):
        assert dropped not in text
    lines = text.split("\n")
    assert "one" in lines
    assert "two" in lines
    assert text == text.strip()
    assert "\n\n\n" not in text


def test_html_without_closing_head_keeps_body() -> None:
    assert parse_document(b"<html><head><title>t</title><p>body text", "a.htm") == "body text"


def test_html_line_breaks() -> None:
    assert parse_document(b"<p>a<br>b<br/>c</p><p>d</p>", "a.html") == "a\nb\nc\n\nd"


def test_html_sniffed_without_extension() -> None:
    assert parse_document(b"<!doctype html><p>hi<script>x()</script></p>", "page") == "hi"


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_text_extracted() -> None:
    data = make_pdf(["Quiver stores vectors", "Second line (with parens) and a \\ backslash"])
    text = parse_document(data, "doc.pdf")
    assert "Quiver stores vectors" in text
    assert "Second line (with parens) and a \\ backslash" in text


def test_multi_page_pdf_pages_joined() -> None:
    data = make_pdf([f"line number {i}" for i in range(6)], lines_per_page=3)
    assert len(PdfReader(io.BytesIO(data)).pages) == 2
    text = parse_document(data, "doc.pdf")
    assert "line number 2\n\nline number 3" in text
    assert "line number 5" in text


def test_pdf_detected_by_content_whatever_the_name() -> None:
    assert "sniffed" in parse_document(make_pdf(["sniffed by magic"]), "upload.bin")


@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9])
def test_truncated_pdf_is_invalid(keep: float) -> None:
    data = make_pdf(["some text that will be cut off"] * 5)
    error = _error(data[: int(len(data) * keep)], "cut.pdf")
    assert error.code == ErrorCode.INVALID_FILE
    assert error.message.startswith("PDF is corrupt: ")


def test_pdf_without_text_is_invalid() -> None:
    error = _error(make_pdf([]), "scan.pdf")
    assert (error.code, error.message) == (
        ErrorCode.INVALID_FILE,
        "PDF has no extractable text (scanned images?)",
    )


def _encrypted_pdf(user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf(["confidential words"]))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_password_protected_pdf_is_invalid() -> None:
    error = _error(_encrypted_pdf("secret"), "locked.pdf")
    assert (error.code, error.message) == (
        ErrorCode.INVALID_FILE,
        "PDF is encrypted (password protected)",
    )


def test_pdf_encrypted_with_empty_user_password_is_read() -> None:
    assert "confidential words" in parse_document(_encrypted_pdf(""), "owner-only.pdf")


def test_pdf_name_without_pdf_content_is_invalid() -> None:
    error = _error(b"just some text", "fake.pdf")
    assert error.code == ErrorCode.INVALID_FILE
    assert "not a PDF" in error.message


# --- DOCX -----------------------------------------------------------------------------------


def test_docx_paragraphs_and_table() -> None:
    data = make_docx(
        ["First paragraph about retrieval.", "Second paragraph."],
        table=[["Name", "Value"], ["alpha", "42"]],
    )
    text = parse_document(data, "report.docx")
    assert "First paragraph about retrieval.\nSecond paragraph." in text
    assert "Name\tValue\nalpha\t42" in text


def test_docx_detected_by_content_whatever_the_name() -> None:
    assert parse_document(make_docx(["inside"]), "upload") == "inside"


def test_docx_merged_cells_appear_once() -> None:
    document = docx.Document()
    table = document.add_table(rows=1, cols=3)
    merged = table.cell(0, 0).merge(table.cell(0, 1))
    merged.text = "wide"
    table.cell(0, 2).text = "narrow"
    out = io.BytesIO()
    document.save(out)
    assert parse_document(out.getvalue(), "merged.docx") == "wide\tnarrow"


def test_corrupt_docx_is_invalid() -> None:
    data = make_docx(["will be cut"])
    error = _error(data[: len(data) // 2], "broken.docx")
    assert error.code == ErrorCode.INVALID_FILE
    assert error.message.startswith("DOCX is corrupt")


def test_docx_name_without_zip_content_is_invalid() -> None:
    error = _error(b"not a zip at all", "fake.docx")
    assert error.code == ErrorCode.INVALID_FILE


def test_docx_with_broken_xml_is_invalid() -> None:
    source = zipfile.ZipFile(io.BytesIO(make_docx(["text"])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            body = source.read(item)
            target.writestr(item, b"<w:document" if item.filename == "word/document.xml" else body)
    error = _error(out.getvalue(), "bad.docx")
    assert error.code == ErrorCode.INVALID_FILE
    assert error.message.startswith("DOCX is corrupt: ")


def test_plain_zip_is_unsupported() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")
    error = _error(out.getvalue(), "archive.zip")
    assert error.code == ErrorCode.UNSUPPORTED_FILE
    assert error.message == "binary content of type 'zip' is not a supported document type"
    # Named .docx, the same archive is a broken DOCX rather than an unsupported type.
    assert _error(out.getvalue(), "archive.docx").code == ErrorCode.INVALID_FILE


def test_zip_bomb_docx_is_rejected() -> None:
    started = time.monotonic()
    out = io.BytesIO()
    piece = b"\x00" * (1 << 20)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            for _ in range(210):
                member.write(piece)
    data = out.getvalue()
    assert len(data) < 1 << 20

    error = _error(data, "bomb.docx")

    assert error.code == ErrorCode.INVALID_FILE
    assert "zip bomb" in error.message
    assert "200 MB" in error.message
    assert time.monotonic() - started < 10


def test_error_survives_pickling_across_processes() -> None:
    error = pickle.loads(pickle.dumps(FileProcessingError(ErrorCode.INVALID_FILE, "file is empty")))
    assert (error.code, error.message) == (ErrorCode.INVALID_FILE, "file is empty")
    assert str(error) == "invalid_file: file is empty"


def test_text_starting_like_a_magic_is_still_text() -> None:
    assert parse_document(b"ID3 tags explained", "notes.md") == "ID3 tags explained"


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=examples(300), deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.binary(max_size=256).map(lambda b: b"%PDF-1.4\n" + b),
        st.binary(max_size=256).map(lambda b: b"PK\x03\x04" + b),
        st.text(max_size=512).map(lambda s: s.encode("utf-16")),
    ),
    ext=st.sampled_from([".txt", ".json", ".html", ".pdf", ".docx", ".py", ".bin", ""]),
)
def test_only_file_processing_errors_escape(data: bytes, ext: str) -> None:
    try:
        text = parse_document(data, "file" + ext)
    except FileProcessingError as error:
        assert error.code in (ErrorCode.INVALID_FILE, ErrorCode.UNSUPPORTED_FILE)
        assert error.message
    else:
        assert text.strip()
        assert "\r" not in text
