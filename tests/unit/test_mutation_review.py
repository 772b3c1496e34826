"""Tests written by a mutation audit: each kills a mutant the rest of the suite let live (its
docstring names the mutant), where the mutant would change what a user gets."""

from __future__ import annotations

from asyncbackup.etags import clean_etag, is_md5_etag, multipart_parts


def test_an_upper_case_etag_is_still_an_md5_and_a_part_count() -> None:
    """Mutant: ``clean_etag`` without ``.lower()``. Some S3-compatible servers write the hex
    digits of an ETag in upper case: it must still be read as the object's MD5 (a download is
    checked against it; taken for an opaque ETag, a corrupted download would go unchecked) and
    compare equal to our own (lower-case) MD5 of the bytes, or every good copy is refused."""
    upper = '"9E107D9D372BB6826BD81D3542A419D6"'
    assert clean_etag(upper) == "9e107d9d372bb6826bd81d3542a419d6"
    assert is_md5_etag(upper)
    assert multipart_parts('"9E107D9D372BB6826BD81D3542A419D6-3"') == 3
