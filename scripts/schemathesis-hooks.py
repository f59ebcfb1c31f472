"""schemathesis hooks for Shomei's API (loaded by scripts/schemathesis.sh).

PDF request bodies go on the wire as the raw bytes generated for them, and half of the valid
ones (strings; a negative case is another JSON type) are replaced by a real contract
(samples/contract.pdf), so that uploads and verifications reach past `422 invalid-pdf` to the
answers they give a readable PDF.
"""

import pathlib

import schemathesis
from hypothesis import strategies as st

schemathesis.serializer.alias("application/pdf", "application/octet-stream")

CONTRACT = (pathlib.Path(__file__).resolve().parent.parent / "samples" / "contract.pdf").read_bytes()
PDF_OPERATIONS = {("POST", "/v1/documents"), ("POST", "/v1/verify")}


@schemathesis.hook
def flatmap_body(context, body):
    operation = context.operation
    if (
        operation is not None
        and (operation.method.upper(), operation.path) in PDF_OPERATIONS
        and isinstance(body, (str, bytes))
    ):
        return st.sampled_from([body, CONTRACT])
    return st.just(body)
