//! TLS on both legs of a PostgreSQL session.
//!
//! * Job → gateway: only when the target sets `client_tls = true`, so that
//!   clients with `sslmode=require` work. The leg is loopback on the job's
//!   own host, so the gateway presents a certificate it generates at start
//!   and nobody can verify (clients asking for `verify-ca`/`verify-full`
//!   are not served by it); what it buys is compatibility, not secrecy.
//! * Gateway → database: `tls = "require"` encrypts without checking the
//!   certificate, as libpq's `sslmode=require` does; `"verify-full"` checks
//!   the chain against `ca_file` and the name against `server_name` (or
//!   the upstream IP). A server that declines TLS is never used in
//!   plaintext.
//!
//! Only the ring provider is compiled in, and every config names it
//! explicitly rather than relying on a process-wide default.
use std::{fmt, net::SocketAddr, path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::either::Either;

use crate::policy::UpstreamTls;

/// The job's connection: plain, or TLS terminated by the gateway.
pub type ClientStream = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;
/// The gateway's connection to the database.
pub type UpstreamStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Read and write halves of a plain-or-TLS stream. Plain TCP splits
/// without a lock (`into_split`), which is what almost every session is;
/// only a TLS stream pays for `tokio::io::split`'s shared state.
pub fn split<T: AsyncRead + AsyncWrite>(
    stream: Either<TcpStream, T>,
) -> (
    Either<OwnedReadHalf, ReadHalf<T>>,
    Either<OwnedWriteHalf, WriteHalf<T>>,
) {
    match stream {
        Either::Left(tcp) => {
            let (r, w) = tcp.into_split();
            (Either::Left(r), Either::Left(w))
        }
        Either::Right(tls) => {
            let (r, w) = tokio::io::split(tls);
            (Either::Right(r), Either::Right(w))
        }
    }
}

/// PostgreSQL's SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS acceptor with a freshly generated self-signed certificate for
/// `localhost` and the loopback addresses.
pub fn generated_acceptor() -> Result<TlsAcceptor, String> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let cert = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate the client-side TLS certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| format!("cannot use the generated TLS certificate: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client config of an upstream TLS mode; `None` for `disable`.
pub fn upstream_config(tls: &UpstreamTls) -> Result<Option<Arc<ClientConfig>>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match tls {
        UpstreamTls::Disable => return Ok(None),
        UpstreamTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
            .with_no_client_auth(),
        UpstreamTls::VerifyFull { ca_file, .. } => builder
            .with_root_certificates(load_roots(ca_file)?)
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The name the upstream's certificate must carry: `server_name`, or the
/// upstream IP.
pub fn server_name(tls: &UpstreamTls, addr: SocketAddr) -> Result<ServerName<'static>, String> {
    match tls {
        UpstreamTls::VerifyFull {
            server_name: Some(name),
            ..
        } => ServerName::try_from(name.clone())
            .map_err(|e| format!("server_name {name:?} is not a valid TLS name: {e}")),
        _ => Ok(ServerName::IpAddress(addr.ip().into())),
    }
}

/// Reads a PEM file of CA certificates; errors name the file and what is
/// wrong with it (used by `policy check` too).
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a valid PEM file: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks)"
        ));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} in {shown} is unusable: {e}", i + 1))?;
    }
    Ok(roots)
}

/// Why upstream TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the server does not accept TLS connections, and the target requires TLS")]
    Declined,
    #[error("the server answered the TLS request with {0:?}, not 'S' or 'N'")]
    Unexpected(u8),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Asks the server for TLS on a fresh connection and performs the
/// handshake. Exactly one byte is read before the handshake, so nothing an
/// attacker on the path sends ahead of it can be taken as the server's.
pub async fn negotiate_upstream(
    mut stream: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamTlsError> {
    stream.write_all(&SSL_REQUEST).await?;
    match stream.read_u8().await? {
        b'S' => TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(UpstreamTlsError::Handshake),
        b'N' => Err(UpstreamTlsError::Declined),
        other => Err(UpstreamTlsError::Unexpected(other)),
    }
}

/// `tls = "require"`: encrypted, any certificate (libpq's `sslmode=require`).
/// Handshake signatures are still checked, so the session key really
/// belongs to whoever holds the presented certificate.
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    fn new() -> Self {
        Self {
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl fmt::Debug for AnyCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyCertificate")
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_from_a_generated_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["db.internal".into()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.cert.pem()).unwrap();
        assert_eq!(load_roots(&path).unwrap().len(), 1);
    }

    #[test]
    fn bad_ca_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = load_roots(&empty).unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = load_roots(&missing).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_roots(&garbage).unwrap_err();
        assert!(
            e.contains("unusable") || e.contains("not a valid PEM"),
            "{e}"
        );
    }

    #[test]
    fn server_name_defaults_to_the_upstream_ip() {
        let addr: SocketAddr = "127.0.0.9:5432".parse().unwrap();
        assert_eq!(
            server_name(&UpstreamTls::Require, addr).unwrap(),
            ServerName::IpAddress(addr.ip().into())
        );
        let named = UpstreamTls::VerifyFull {
            ca_file: "ca.pem".into(),
            server_name: Some("db.internal".into()),
        };
        assert_eq!(server_name(&named, addr).unwrap().to_str(), "db.internal");
    }

    #[tokio::test]
    async fn generated_acceptor_builds() {
        generated_acceptor().unwrap();
        upstream_config(&UpstreamTls::Require).unwrap().unwrap();
        assert!(upstream_config(&UpstreamTls::Disable).unwrap().is_none());
    }
}
