//! TLS to Postgres as libpq's URL parameters ask for it (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`),
//! over rustls with ring, for every connection the store opens: the audit writer's own (tokio-postgres,
//! through [`MakeRustls`]) and sqlx's (the pool, the listeners, the migrations), which reach the server
//! through the store's tunnel ([`super::pg_tunnel`]) and this module's handshake. sqlx 0.8's own TLS is
//! not used: with `sslrootcert` it still trusts the public web roots, so its `verify-ca` would accept
//! any publicly trusted certificate.
//!
//! Modes, as libpq: `disable` plaintext; `prefer` TLS when the server offers it, else plaintext; `require`
//! TLS, the certificate unchecked unless `sslrootcert` is given (then checked as `verify-ca`); `verify-ca`
//! the chain up to a CA of `sslrootcert`; `verify-full` that too and the host name. Without `sslmode`:
//! `verify-full` when `sslrootcert` is given or the host is not loopback, else `disable`. Unlike libpq,
//! a failed handshake under `prefer` is an error (not a reason to fall back to plaintext), no file is
//! read from `~/.postgresql`, and the `PG*` environment variables are not read.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;

use super::Error;

/// The URL parameters this module reads; they are taken out of the URL the drivers get (tokio-postgres
/// refuses the ones it does not know).
const TLS_PARAMS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslnegotiation",
];
/// Postgres's `SSLRequest`: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const DEFAULT_PORT: u16 = 5432;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, Error> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::invalid(
                    "store.database_url sslmode `allow` is not supported (use `prefer`, or `disable` for plaintext)",
                ))
            }
            other => {
                return Err(Error::invalid(format!(
                    "store.database_url sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What the server's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// Not checked (`require` or `prefer` without `sslrootcert`).
    Unchecked,
    /// `sslrootcert=<file>`: the CA certificates (PEM) it must chain to, and no other.
    File(PathBuf),
    /// `sslrootcert=system`, or `verify-full` without `sslrootcert`: the public web roots (Mozilla's).
    System,
}

/// Where the URL points, as far as TLS cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    /// One TCP host (a name or an address) and its port.
    Tcp { host: String, port: u16 },
    /// A Unix socket, or no host at all (the drivers' local default): TLS is not used there.
    Local,
    /// Several hosts (tokio-postgres tries them in turn): plaintext only, the tunnel reaches one.
    Several,
}

/// A Postgres URL split into what the drivers get and what TLS needs. Parsed without reading any file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PgUrl {
    /// The URL without its TLS parameters. Holds the password: never logged, never in an error.
    plain: String,
    mode: SslMode,
    /// How `mode` was chosen, for messages.
    chosen: &'static str,
    roots: Roots,
    /// `sslcert` and `sslkey`, given together.
    client: Option<(PathBuf, PathBuf)>,
    place: Place,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUrl")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl PgUrl {
    /// Reads and checks the TLS parameters of `url` (a `postgres://` URL); errors name the parameter.
    pub(crate) fn parse(url: &str) -> Result<PgUrl, Error> {
        let (plain, found) = split_tls_params(url)?;
        let get = |key: &str| {
            found
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let config = tokio_postgres::Config::from_str(&plain).map_err(|e| {
            Error::invalid(format!(
                "store.database_url cannot be used: {}",
                e.to_string().to_lowercase()
            ))
        })?;
        let place = place_of(&config);
        let roots = match get("sslrootcert") {
            None | Some("") => Roots::Unchecked,
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
        };
        let (mode, chosen) = match get("sslmode") {
            Some(value) => (SslMode::parse(value)?, ""),
            None if roots != Roots::Unchecked => (
                SslMode::VerifyFull,
                " (the default when sslrootcert is given)",
            ),
            None => match &place {
                Place::Tcp { host, .. } if !is_loopback(host) => (
                    SslMode::VerifyFull,
                    " (the default for a host that is not loopback)",
                ),
                _ => (SslMode::Disable, " (the default for a loopback host)"),
            },
        };
        let client = match (get("sslcert"), get("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "store.database_url sslcert and sslkey must be given together",
                ))
            }
        };
        match get("sslnegotiation") {
            None | Some("postgres") => {}
            Some(other) => {
                return Err(Error::invalid(format!(
                    "store.database_url sslnegotiation `{other}` is not supported (only `postgres`)"
                )))
            }
        }
        let mut parsed = PgUrl {
            plain,
            mode,
            chosen,
            roots,
            client,
            place,
        };
        parsed.check()?;
        Ok(parsed)
    }

    /// The combinations libpq refuses, and TLS where it cannot be had.
    fn check(&mut self) -> Result<(), Error> {
        let label = self.label();
        let refuse = |what: &str| {
            Err(Error::invalid(format!(
                "store.database_url {label}: {what}"
            )))
        };
        match (&self.roots, self.mode) {
            (Roots::System, SslMode::VerifyFull) | (_, SslMode::Disable) => {}
            (Roots::System, _) => {
                return refuse(
                    "sslrootcert=system needs sslmode=verify-full (a public CA vouches for a name, not for a server)",
                )
            }
            (Roots::Unchecked, SslMode::VerifyCa) => {
                return refuse(
                    "needs sslrootcert, the file of CA certificates (PEM) the server's certificate must chain to",
                )
            }
            (Roots::Unchecked, SslMode::VerifyFull) => self.roots = Roots::System,
            _ => {}
        }
        match (&self.place, self.mode) {
            (_, SslMode::Disable) | (Place::Tcp { .. }, _) => Ok(()),
            // As libpq: no TLS over a Unix socket; `prefer` then means plaintext.
            (Place::Local, SslMode::Prefer) => {
                self.mode = SslMode::Disable;
                Ok(())
            }
            (Place::Local, _) => {
                refuse("TLS needs a TCP host, and the URL names a Unix socket or no host")
            }
            (Place::Several, _) => refuse("TLS to postgres supports one host only"),
        }
    }

    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// The URL without its TLS parameters (holds the password).
    pub(crate) fn plain(&self) -> &str {
        &self.plain
    }

    /// The one TCP host and port, when TLS may be used.
    pub(crate) fn tcp(&self) -> Option<(&str, u16)> {
        match &self.place {
            Place::Tcp { host, port } => Some((host, *port)),
            _ => None,
        }
    }

    /// `sslmode=<mode>`, and why when it is the default: how every message names the setting.
    pub(crate) fn label(&self) -> String {
        format!("sslmode={}{}", self.mode.as_str(), self.chosen)
    }

    /// Reads the certificate files and builds the TLS client; errors name the parameter and the file.
    pub(crate) fn load(&self) -> Result<Tls, Error> {
        let label = self.label();
        let config = match self.mode {
            SslMode::Disable => None,
            _ => Some(Arc::new(self.client_config(&label)?)),
        };
        let trust = match &self.roots {
            Roots::Unchecked => "no CA (the certificate is not checked)".to_owned(),
            Roots::File(path) => format!("sslrootcert `{}`", path.display()),
            Roots::System => "the public web roots (give sslrootcert for a private CA)".to_owned(),
        };
        Ok(Tls {
            mode: self.mode,
            config,
            label,
            trust,
        })
    }

    fn client_config(&self, label: &str) -> Result<ClientConfig, Error> {
        let fail = |what: String| Error::invalid(format!("store.database_url {label}: {what}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.roots {
            Roots::Unchecked => None,
            Roots::System => Some(RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            )),
            Roots::File(path) => Some(read_roots(path).map_err(fail)?),
        };
        let verifier = Verifier {
            roots: roots.map(Arc::new),
            check_name: self.mode == SslMode::VerifyFull,
            provider: provider.clone(),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(format!("no TLS version available: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert).map_err(|e| fail(format!("sslcert {e}")))?;
                let key = read_key(key).map_err(|e| fail(format!("sslkey {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| fail(format!("sslcert and sslkey cannot be used: {e}")))?
            }
        };
        // What PostgreSQL 17 expects of a client; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }
}

/// The URL without the TLS parameters, and those parameters percent-decoded, in order.
fn split_tls_params(url: &str) -> Result<(String, Vec<(String, String)>), Error> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut found = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if TLS_PARAMS.contains(&key) {
            let value = super::config::percent_decode(value).ok_or_else(|| {
                Error::invalid(format!(
                    "store.database_url {key} has a malformed percent-encoded value"
                ))
            })?;
            found.push((key.to_owned(), value));
        } else {
            kept.push(pair);
        }
    }
    let plain = match kept.is_empty() {
        true => base.to_owned(),
        false => format!("{base}?{}", kept.join("&")),
    };
    Ok((plain, found))
}

fn place_of(config: &tokio_postgres::Config) -> Place {
    use tokio_postgres::config::Host;
    let port = config.get_ports().first().copied().unwrap_or(DEFAULT_PORT);
    match config.get_hosts() {
        [] => Place::Local,
        [Host::Tcp(host)] => Place::Tcp {
            host: host.clone(),
            port,
        },
        [_] => Place::Local,
        _ => Place::Several,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path).map_err(|e| format!("sslrootcert {e}"))? {
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert `{}`: {e}", path.display()))?;
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("`{shown}` cannot be read: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{shown}` is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("`{shown}` holds no certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let shown = path.display();
    key_file_is_private(path).map_err(|e| format!("`{shown}`: {e}"))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("`{shown}` holds no usable key: {e}"))
}

/// As libpq: the key file is readable by its owner only, or also by its group when root owns it.
#[cfg(unix)]
fn key_file_is_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(format!(
            "must not be readable by others (mode {:o}; chmod 0600)",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn key_file_is_private(_: &Path) -> Result<(), String> {
    Ok(())
}

/// Checks the server's certificate as the mode asks: the chain up to `roots` when there are roots, the
/// name too for `verify-full`; always the handshake's signatures.
#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_name {
            verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The TLS client of one store, files read: shared by the writer's connection and the tunnel's.
pub(crate) struct Tls {
    mode: SslMode,
    /// `None` for `disable`.
    config: Option<Arc<ClientConfig>>,
    label: String,
    /// What the certificate is checked against, for messages.
    trust: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("label", &self.label).finish()
    }
}

/// A connection to the server, encrypted or not (`prefer` against a server without TLS).
pub(crate) enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Tls {
    /// `sslmode=<mode>`, and why when it is the default.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Connects to `host:port` and negotiates TLS as the mode asks (the tunnel's way in). The error is
    /// the whole message: it names `store.database_url`, the mode and what failed.
    pub(crate) async fn open(&self, host: &str, port: u16) -> Result<Upstream, String> {
        let fail = |what: String| format!("store.database_url {}: {what}", self.label);
        let mut tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| fail(format!("cannot connect to `{host}:{port}`: {e}")))?;
        // As every driver does: the protocol's small messages must not wait for more.
        tcp.set_nodelay(true)
            .map_err(|e| fail(format!("cannot set TCP_NODELAY: {e}")))?;
        if self.config.is_none() {
            return Ok(Upstream::Plain(tcp));
        }
        let answer = async {
            tcp.write_all(&SSL_REQUEST).await?;
            tcp.read_u8().await
        };
        match answer.await {
            Ok(b'S') => {}
            Ok(b'N') if self.mode == SslMode::Prefer => return Ok(Upstream::Plain(tcp)),
            Ok(b'N') => return Err(fail(NO_TLS.to_owned())),
            Ok(other) => {
                return Err(fail(format!(
                    "the server answered the TLS request with 0x{other:02x}, not a postgres answer"
                )))
            }
            Err(e) => return Err(fail(format!("the TLS request failed: {e}"))),
        }
        self.handshake(host, tcp)
            .await
            .map(|s| Upstream::Tls(Box::new(s)))
    }

    /// The TLS handshake on `stream` (the server said yes to the TLS request), for host `host`.
    async fn handshake<S>(&self, host: &str, stream: S) -> Result<TlsStream<S>, String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let fail = |what: String| format!("store.database_url {}: {what}", self.label);
        let Some(config) = &self.config else {
            return Err(fail("TLS is disabled".to_owned()));
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| fail(format!("host `{host}` is not a name TLS can check")))?;
        TlsConnector::from(config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| fail(self.explain(host, &e)))
    }

    /// What a failed handshake means, in the operator's terms.
    fn explain(&self, host: &str, e: &io::Error) -> String {
        let cause = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match cause {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("the server's certificate is not valid for host `{host}`")
                }
                CertificateError::UnknownIssuer => format!(
                    "the server's certificate is not signed by a CA of {}",
                    self.trust
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "the server's certificate has expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "the server's certificate is not valid yet".to_owned()
                }
                other => format!("the server's certificate was refused ({other:?})"),
            },
            Some(rustls::Error::AlertReceived(alert)) => {
                format!("the server refused the TLS handshake ({alert:?}; does it want a client certificate, sslcert and sslkey?)")
            }
            Some(other) => format!("the TLS handshake failed: {other}"),
            None => format!("the TLS handshake failed: {e}"),
        }
    }

    /// The connector the audit writer's tokio-postgres connection uses.
    pub(crate) fn connector(self: &Arc<Self>) -> MakeRustls {
        MakeRustls(self.clone())
    }

    /// The tokio-postgres mode for this mode: the checks are this module's, tokio-postgres only asks.
    pub(crate) fn driver_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Driver;
        match self.mode {
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        }
    }
}

const NO_TLS: &str =
    "the server does not offer TLS (sslmode=prefer or sslmode=disable would allow plaintext)";

/// tokio-postgres's TLS for the audit writer's connection.
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<Tls>);

impl MakeTlsConnect<tokio_postgres::Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = std::convert::Infallible;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            tls: self.0.clone(),
            host: domain.to_owned(),
        })
    }
}

pub(crate) struct RustlsConnect {
    tls: Arc<Tls>,
    host: String,
}

/// A failed handshake of the writer's connection, with this module's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HandshakeError(pub(crate) String);

impl TlsConnect<tokio_postgres::Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, HandshakeError>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            self.tls
                .handshake(&self.host, stream)
                .await
                .map(RustlsStream)
                .map_err(HandshakeError)
        })
    }
}

/// The writer's encrypted connection. Plaintext connections never get here: tokio-postgres keeps the
/// raw socket for them, as with `NoTls`.
pub(crate) struct RustlsStream(TlsStream<tokio_postgres::Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PgUrl, String> {
        PgUrl::parse(url).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_mode_depends_on_the_host_and_on_sslrootcert() {
        let mode = |url: &str| parse(url).map(|u| (u.mode, u.roots));
        assert_eq!(
            mode("postgres://u:pw@127.0.0.1:5432/db"),
            Ok((SslMode::Disable, Roots::Unchecked))
        );
        assert_eq!(
            mode("postgres://u@localhost/db"),
            Ok((SslMode::Disable, Roots::Unchecked))
        );
        assert_eq!(
            mode("postgres://u@[::1]:5433/db"),
            Ok((SslMode::Disable, Roots::Unchecked))
        );
        assert_eq!(
            mode("postgres://u@db.internal/db"),
            Ok((SslMode::VerifyFull, Roots::System))
        );
        assert_eq!(
            mode("postgres://u@127.0.0.1/db?sslrootcert=/ca.pem"),
            Ok((SslMode::VerifyFull, Roots::File("/ca.pem".into())))
        );
        assert_eq!(
            mode("postgres://u@db/db?sslmode=require&sslrootcert=/ca%20x.pem"),
            Ok((SslMode::Require, Roots::File("/ca x.pem".into())))
        );
        assert_eq!(
            mode("postgres://u@db/db?sslmode=verify-full"),
            Ok((SslMode::VerifyFull, Roots::System))
        );
        // No TLS over a Unix socket, as libpq: `prefer` is plaintext there.
        assert_eq!(
            mode("postgres:///db?host=/var/run/postgresql&sslmode=prefer"),
            Ok((SslMode::Disable, Roots::Unchecked))
        );
    }

    #[test]
    fn the_drivers_get_the_url_without_its_tls_parameters() {
        let url = parse(
            "postgres://u:pw@db:5433/db?sslmode=require&application_name=x&sslrootcert=/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            url.plain(),
            "postgres://u:pw@db:5433/db?application_name=x&connect_timeout=3"
        );
        assert_eq!(url.tcp(), Some(("db", 5433)));
        assert_eq!(
            parse("postgres://u@db/db?sslmode=disable").unwrap().plain(),
            "postgres://u@db/db"
        );
    }

    #[test]
    fn refused_combinations_name_the_parameter() {
        let refused = |url: &str, needle: &str| {
            let e = parse(url).err().unwrap_or_default();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.contains("store.database_url"), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        };
        refused("postgres://u:s3cret@db/db?sslmode=verify-ca", "sslrootcert");
        refused(
            "postgres://u:s3cret@db/db?sslmode=require&sslrootcert=system",
            "sslrootcert=system",
        );
        refused("postgres://u:s3cret@db/db?sslmode=maybe", "sslmode `maybe`");
        refused("postgres://u:s3cret@db/db?sslmode=allow", "sslmode `allow`");
        refused("postgres://u:s3cret@db/db?sslcert=/c.pem", "sslkey");
        refused(
            "postgres://u:s3cret@db/db?sslmode=require&sslnegotiation=direct",
            "sslnegotiation",
        );
        refused(
            "postgres://u:s3cret@/db?host=/run/pg&sslmode=require",
            "Unix socket",
        );
        refused(
            "postgres://u:s3cret@a,b/db?sslmode=require",
            "one host only",
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_client_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "not read").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!(
            "postgres://u@db/db?sslmode=require&sslcert=/c.pem&sslkey={}",
            key.display()
        ))
        .unwrap()
        .client_config("sslmode=require")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        // The certificate is read first: a missing one is named before the key.
        assert!(e.contains("sslcert `/c.pem` cannot be read"), "{e}");
        assert!(key_file_is_private(&key)
            .unwrap_err()
            .contains("chmod 0600"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(key_file_is_private(&key).is_ok());
    }

    #[test]
    fn missing_files_are_named() {
        let e =
            parse("postgres://u:s3cret@db/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .unwrap()
                .load()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
        assert!(
            e.contains("sslmode=verify-ca: sslrootcert `/nonexistent/ca.pem` cannot be read"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }
}
