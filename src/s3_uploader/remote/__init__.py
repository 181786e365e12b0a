"""The one narrow interface to the bucket, and its implementations.

Everything s3-uploader asks of S3 goes through :class:`Remote` (:mod:`.base`): put a small object,
the multipart steps, confirm one object (HEAD), list one folder (ListObjectsV2), delete, check
access. Three implementations share one contract test suite: :class:`BotoRemote` (:mod:`.boto`,
boto3: the real thing, used against AWS and any S3-compatible server), :class:`ObstoreRemote`
(:mod:`.obstore`: single PUTs sent by the Rust ``object_store`` through obstore, everything else by
the BotoRemote it holds; the default where installed, far less CPU per small file) and
:class:`MemoryRemote` (:mod:`.memory`, in memory, for unit tests).

Every failure of a request is one :class:`RemoteError` (:mod:`.errors`), classified by the remote
where it reads the answer. TLS trust is one setting for both transports (:mod:`.trust`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

from .base import (MultipartUpload, ObjectInfo, PutOptions, Remote, clean_etag, md5_b64, multipart_etag, same_checksum,
                   stored_checksum)
from .boto import BotoRemote
from .errors import TLS_CODE, RemoteError, TLSError, s3_error
from .memory import MemoryRemote, memory_error
from .obstore import ObstoreRemote
from .trust import Trust, read_bundle, trust_bundle

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["BotoRemote", "MemoryRemote", "MultipartUpload", "ObjectInfo", "ObstoreRemote", "PutOptions", "Remote",
           "RemoteError", "TLSError", "TLS_CODE", "Trust", "clean_etag", "md5_b64", "memory_error", "multipart_etag",
           "same_checksum", "stored_checksum",
           "obstore_available", "read_bundle", "remote_from_config", "s3_error", "trust_bundle"]


def obstore_available() -> bool:
    """Whether the obstore package (Python >= 3.11) can be imported."""
    try:
        import obstore  # noqa: F401
    except ImportError:
        return False
    return True


def remote_from_config(cfg: Config) -> Union[BotoRemote, ObstoreRemote]:
    """The remote a Config describes, its pool sized for every request that can be in flight.

    ``[s3] transport``: ``obstore`` sends single PUTs through :class:`ObstoreRemote`; ``boto3``
    sends everything through :class:`BotoRemote`; ``auto`` is obstore when it is installed.
    """
    from ..concurrency import pool_size
    s3, up = cfg.s3, cfg.upload
    transport = getattr(s3, "transport", "boto3")
    cls: Union[type[BotoRemote], type[ObstoreRemote]] = BotoRemote
    if transport in ("obstore", "auto") and obstore_available():
        cls = ObstoreRemote
    elif transport == "obstore":
        import logging
        logging.getLogger(__name__).warning("[s3] transport = obstore, but obstore is not installed (it needs "
                                            "Python >= 3.11: pip install obstore); using boto3")
    return cls(s3.bucket, region=s3.region, endpoint_url=s3.endpoint_url, profile=s3.profile,
               credentials_file=s3.credentials_file, addressing_style=s3.addressing_style,
               ca_bundle=s3.ca_bundle, pool_size=pool_size(up.upload_workers, up.max_concurrency),
               connect_timeout=up.connect_timeout, read_timeout=up.read_timeout)
