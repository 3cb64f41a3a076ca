"""URL policy for every download: allowed schemes and hosts, redirect checks, and credential redaction.

    check_url_allowed("https://ftp.uniprot.org/x.fasta.gz", allowed_hosts=["ftp.uniprot.org"])
    redact_url("https://user:pw@host/f?token=abc")          # -> 'https://***@host/f?token=***'

A refused URL raises :class:`PermanentDownloadError` (never retried). :func:`redirect_guard` is a requests
response hook that checks each redirect target before requests follows it, so a refused host is never
contacted. Tests: ``.venv/bin/pytest -q tests/test_download.py tests/test_reliability_security.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from pipeline_lib.errors import PipelineError

__all__ = ["PermanentDownloadError", "check_url_allowed", "redact_url", "redirect_guard", "scrub_credentials",
           "url_policy"]

_SECRET_PARAMS = ("token", "key", "sig", "signature", "password", "passwd", "secret", "auth", "credential")


class PermanentDownloadError(PipelineError):
    """A download that retrying cannot fix: a refused URL, or a 4xx status other than 408/429."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        self.url, self.status = url, status
        super().__init__(message)

    def __reduce__(self):  # keep the keywords when pickled: Dask task runners send errors back that way
        return _permanent_download_error, (self.args[0], self.url, self.status), self.__dict__


def _permanent_download_error(message: str, url: str, status: int | None) -> PermanentDownloadError:
    return PermanentDownloadError(message, url=url, status=status)


def redact_url(url: str) -> str:
    """``url`` without user:password and with token-like query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_credentials(text: str, url: str) -> str:
    """Remove the credentials of ``url`` from free text (exception messages may echo them)."""
    parts = urlsplit(url)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return text


def check_url_allowed(url: str, allowed_schemes: Iterable[str] = ("http", "https"),
                      allowed_hosts: Iterable[str] | None = None) -> None:
    """Raise :class:`PermanentDownloadError` unless the scheme (and host, when a list is given) is allowed."""
    parts = urlsplit(url)
    schemes = {s.lower() for s in allowed_schemes}
    if parts.scheme.lower() not in schemes:
        raise PermanentDownloadError(
            f"refusing {redact_url(url)}: scheme {parts.scheme or '<none>'!r} is not one of {sorted(schemes)}",
            url=redact_url(url))
    if parts.scheme.lower() in ("http", "https") and not parts.hostname:
        raise PermanentDownloadError(f"refusing {redact_url(url)}: no host", url=redact_url(url))
    if allowed_hosts is not None:
        hosts = {h.lower() for h in allowed_hosts}
        if (parts.hostname or "").lower() not in hosts:
            raise PermanentDownloadError(
                f"refusing {redact_url(url)}: host {parts.hostname!r} is not one of {sorted(hosts)}",
                url=redact_url(url))


def url_policy(url: str, allowed_schemes: Iterable[str], allowed_hosts: Iterable[str] | None) -> dict[str, Any]:
    """Check ``url`` now and return the policy keywords to check again after redirects (:func:`redirect_guard`)."""
    policy: dict[str, Any] = {"allowed_schemes": tuple(allowed_schemes),
                              "allowed_hosts": None if allowed_hosts is None else tuple(allowed_hosts)}
    check_url_allowed(url, **policy)
    return policy


def redirect_guard(allowed_schemes: Iterable[str], allowed_hosts: Iterable[str] | None) -> Callable[..., None]:
    """A requests response hook: a redirect to a URL outside the policy raises before it is followed."""
    def guard(resp: requests.Response, *_args: Any, **_kwargs: Any) -> None:
        if resp.is_redirect:
            try:
                check_url_allowed(urljoin(resp.url, resp.headers["location"]), allowed_schemes, allowed_hosts)
            except PermanentDownloadError:
                resp.close()
                raise

    return guard
