"""Build small real documents (PDF, DOCX) for tests."""

from __future__ import annotations

import io

import docx

_LINES_PER_PAGE = 40


def _pdf_string(line: str) -> bytes:
    """A PDF literal string; text must be Latin-1 (WinAnsi) encodable."""
    escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def make_pdf(text_lines: list[str], *, lines_per_page: int = _LINES_PER_PAGE) -> bytes:
    """A valid PDF 1.4 with the lines drawn in Helvetica, `lines_per_page` per page.

    Objects: 1 catalog, 2 page tree, 3 font, then a page and its content stream per page.
    The xref table holds the real byte offset of every object.
    """
    pages = [text_lines[i : i + lines_per_page] for i in range(0, len(text_lines), lines_per_page)]
    pages = pages or [[]]
    page_ids = [4 + 2 * i for i in range(len(pages))]
    kids = b" ".join(b"%d 0 R" % page_id for page_id in page_ids)
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for page_id, lines in zip(page_ids, pages, strict=True):
        ops = [b"BT", b"/F1 12 Tf", b"14 TL", b"72 750 Td"]
        ops += [_pdf_string(line) + b" Tj T*" for line in lines]
        ops.append(b"ET")
        content = b"\n".join(ops)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (page_id + 1)
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_offset = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(out)


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    """A DOCX made with python-docx: the paragraphs, then the table (rows of cell texts)."""
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=max(len(row) for row in table))
        for row_cells, row in zip(grid.rows, table, strict=True):
            for cell, text in zip(row_cells.cells, row, strict=False):
                cell.text = text
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_pdf_repeating_page(repeats: int) -> bytes:
    """A PDF whose page tree lists one page (object 4, with text) `repeats` times: a few
    bytes per repeat, and in pypdf one page extraction per repeat."""
    content = b"BT /F1 12 Tf 72 720 Td (the same page again) Tj ET"
    kids = b" ".join([b"4 0 R"] * repeats)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % repeats,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 5 0 R >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def make_docx_with_xml(xml_bytes: int) -> bytes:
    """A DOCX (python-docx's package) whose word/document.xml is about ``xml_bytes`` of short
    paragraphs."""
    import zipfile

    source = zipfile.ZipFile(io.BytesIO(make_docx(["x"])))
    parts = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document '
        'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    ]
    size, i = 0, 0
    while size < xml_bytes:
        p = f"<w:p><w:r><w:rPr><w:b/></w:rPr><w:t>paragraph number {i} of many</w:t></w:r></w:p>"
        parts.append(p)
        size += len(p)
        i += 1
    parts.append("<w:sectPr/></w:body></w:document>")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "word/document.xml":
                data = "".join(parts).encode()
            target.writestr(item.filename, data)
    return out.getvalue()
