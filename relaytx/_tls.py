# -*- test-case-name: tests.integration.test_security -*-
"""
TLS for the listener and for dialled C{wss://} peers, from the C{[tls]}
table of the config file::

    [tls]
    cert = "node.pem"              # this node's certificate (PEM)
    key = "node.key"               # its private key (PEM; may be inside cert)
    ca = "ca.pem"                  # the CA that signs the mesh's certificates
    require_client_cert = true     # mutual TLS: refuse peers without one

With C{cert} and C{key}, a numeric C{--port} listens with TLS (HTTPS, WSS).
With C{ca}, dialled C{wss://} peers must present a certificate that CA
signed (otherwise the system's trust store is used), and this node presents
its own certificate as a client certificate. With C{require_client_cert},
the listener refuses any client whose certificate C{ca} did not sign.
"""

from __future__ import annotations

import ssl as stdssl
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

from relaytx._stdtls import peer_certificate
from relaytx.wire import NODE_ID_RE


class TlsError(ValueError):
    """The TLS files cannot be used."""


def read_pem(path: str, what: str) -> bytes:
    """
    :param what: the setting that names the file (C{cert}, C{key}, C{ca}).
    :returns: the file's bytes.
    :raises TlsError: naming the setting, if it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TlsError(f"tls.{what} {path}: {e.strerror}") from None


@frozen
class TlsConfig:
    """Paths of the PEM files and the mutual-TLS switch."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    require_client_cert: bool = False

    def _identity(self) -> ssl.PrivateCertificate | None:
        if self.cert is None:
            return None
        pem = read_pem(self.cert, "cert")
        if self.key is not None:
            pem += b"\n" + read_pem(self.key, "key")
        try:
            identity: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(pem)
        except Exception as e:
            raise TlsError(f"tls.cert/key: not a PEM certificate and key: {e}") from None
        return identity

    def _authority(self) -> ssl.Certificate | None:
        if self.ca is None:
            return None
        try:
            return ssl.Certificate.loadPEM(read_pem(self.ca, "ca"))
        except Exception as e:
            raise TlsError(f"tls.ca {self.ca}: not a PEM certificate: {e}") from None

    @property
    def pki(self) -> bool:
        """
        Whether node identity comes from certificates (SPEC section 9): a
        CA, this node's certificate, and client certificates required. A
        link is then accepted only from a certificate naming the node id it
        claims, at both ends.
        """
        return self.require_client_cert and self.ca is not None and self.cert is not None

    @property
    def serves_tls(self) -> bool:
        """Whether the listener should speak TLS."""
        return self.cert is not None

    def server_context(self) -> stdssl.SSLContext:
        """
        :returns: the listener's TLS context: this node's certificate, and
            with C{require_client_cert}, client certificates C{ca} signed
            required.
        :raises TlsError: if the files are missing or wrong.
        """
        if self.cert is None:
            raise TlsError("tls.cert is needed to listen with TLS")
        context = stdssl.SSLContext(stdssl.PROTOCOL_TLS_SERVER)
        self._common(context)
        if self.require_client_cert:
            if self.ca is None:
                raise TlsError("tls.require_client_cert needs tls.ca")
            self._trust(context)
            context.verify_mode = stdssl.CERT_REQUIRED
        return context

    def client_context(self) -> stdssl.SSLContext:
        """
        :returns: the TLS context for dialling C{wss://} peers: their
            certificate must be signed by C{ca} (the system's trust store
            without it) and name the host dialled; this node's own
            certificate is presented when it has one.
        :raises TlsError: if the files are missing or wrong.
        """
        context = stdssl.SSLContext(stdssl.PROTOCOL_TLS_CLIENT)  # hostname checked
        self._common(context)
        if self.ca is None:
            context.load_default_certs()
        else:
            self._trust(context)
        return context

    def _common(self, context: stdssl.SSLContext) -> None:
        context.minimum_version = stdssl.TLSVersion.TLSv1_2
        context.options |= stdssl.OP_NO_RENEGOTIATION
        if self.cert is not None:
            self._identity()  # the same checks and messages as at start-up
            try:
                context.load_cert_chain(self.cert, self.key)
            except (OSError, stdssl.SSLError) as e:
                raise TlsError(f"tls.cert/key: not a PEM certificate and key: {e}") from None

    def _trust(self, context: stdssl.SSLContext) -> None:
        assert self.ca is not None
        self._authority()
        try:
            context.load_verify_locations(cafile=self.ca)
        except (OSError, stdssl.SSLError) as e:
            raise TlsError(f"tls.ca {self.ca}: not a PEM certificate: {e}") from None

    def check(self) -> None:
        """
        Load every file once, so that mistakes show at start-up.

        :raises TlsError: if one is missing or wrong.
        """
        self._identity()
        self._authority()
        if self.require_client_cert and self.ca is None:
            raise TlsError("tls.require_client_cert needs tls.ca")
        # Without a certificate the listener is plain TCP: mutual TLS asked
        # for there would silently not happen.
        if self.require_client_cert and self.cert is None:
            raise TlsError("tls.require_client_cert needs tls.cert and tls.key")
        if self.key is not None and self.cert is None:
            raise TlsError("tls.key needs tls.cert")


def _names_in_order(cert: x509.Certificate) -> list[str]:
    # The subject's common names, then the DNS names of its alternative names.
    names = [
        str(attribute.value)
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    return names + list(san.get_values_for_type(x509.DNSName))


def certificate_names(cert: x509.Certificate) -> frozenset[str]:
    """
    :returns: the names a certificate gives its holder: the subject's
        common names and the DNS names of its subject alternative names.
        In PKI mode a node's id must be one of them.
    """
    return frozenset(_names_in_order(cert))


def certified_id(cert_path: str) -> str | None:
    """
    :returns: the node id the certificate in C{cert_path} gives its holder
        (PKI mode, with no C{--node-id}): its subject's common name, or
        else the first of its DNS names that is a node id (C{localhost}
        aside); C{None} if it gives none.
    :raises TlsError: if the file cannot be read as a certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(read_pem(cert_path, "cert"))
    except ValueError as e:
        raise TlsError(f"tls.cert {cert_path}: not a PEM certificate: {e}") from None
    return next(
        (n for n in _names_in_order(cert) if n != "localhost" and NODE_ID_RE.fullmatch(n)), None
    )


def peer_certificate_names(transport: Any) -> frozenset[str]:
    """
    :param transport: a connection's transport, TLS or not (or a wrapper
        whose C{transport} leads to one).
    :returns: the names of the certificate the other end presented, or
        none when it presented none (or the connection is not TLS).
    """
    cert = peer_certificate(transport)
    return frozenset() if cert is None else certificate_names(cert)
