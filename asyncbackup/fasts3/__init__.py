"""A lean data path for the hot requests: the source's listing (ListObjectsV2), GetObject,
PutObject, UploadPart and CopyObject over a keep-alive HTTP/1.1 pool of our own (httptools
parses the answers), with SigV4 signing of our own; everything else stays on aiobotocore."""

from .client import FastBody, FastS3, open_fast_s3
from .signer import SigV4Signer
from .target import Target, probe_target

__all__ = ["FastBody", "FastS3", "SigV4Signer", "Target", "open_fast_s3", "probe_target"]
