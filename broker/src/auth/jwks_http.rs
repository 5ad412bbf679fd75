//! A minimal HTTP(S) GET for `jwks_url`: one request per connection, no redirects, no proxies,
//! bounded time and size. TLS uses rustls (ring) with the Mozilla root store (webpki-roots).

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Whole-request deadline: connect, TLS, request, body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated `jwks_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JwksUrl {
    tls: bool,
    /// Host as written (IPv6 with brackets), for the `Host` header.
    authority: String,
    /// Host to connect to and to name in TLS (IPv6 without brackets).
    host: String,
    port: u16,
    path_and_query: String,
    display: String,
}

impl JwksUrl {
    /// `https://...`, or `http://` to 127.0.0.1, `[::1]` or `localhost` only. No user info.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("`{url}` is not a valid URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("`{url}` must use https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("`{url}` must not carry credentials"));
        }
        let host_raw = authority.host();
        if host_raw.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let host = host_raw
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !tls && !matches!(host.as_str(), "127.0.0.1" | "::1" | "localhost") {
            return Err(format!(
                "`{url}`: plain http is only allowed to 127.0.0.1, [::1] or localhost; use https"
            ));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(JwksUrl {
            tls,
            authority: authority.as_str().to_owned(),
            host,
            port,
            path_and_query,
            display: url.to_owned(),
        })
    }

    pub(super) fn as_str(&self) -> &str {
        &self.display
    }
}

/// Fetches JWK sets; holds the TLS configuration.
#[derive(Clone)]
pub(super) struct Fetcher {
    tls: TlsConnector,
}

impl Fetcher {
    pub(super) fn new() -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// GETs `url`; the body of a 200 response, at most `max_bytes`.
    pub(super) async fn get(&self, url: &JwksUrl, max_bytes: usize) -> Result<Vec<u8>, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get_inner(url, max_bytes))
            .await
            .map_err(|_| format!("no answer within {}s", FETCH_TIMEOUT.as_secs()))?
    }

    async fn get_inner(&self, url: &JwksUrl, max_bytes: usize) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // Best effort: small request/response, no need for Nagle.
        let _ = tcp.set_nodelay(true);
        if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| "invalid tls server name".to_owned())?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            request(stream, url, max_bytes).await
        } else {
            request(tcp, url, max_bytes).await
        }
    }
}

async fn request<IO>(io: IO, url: &JwksUrl, max_bytes: usize) -> Result<Vec<u8>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "jwks connection ended with an error");
        }
    });
    let result = async {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url.path_and_query.as_str())
            .header(HOST, url.authority.as_str())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("agent-broker/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<&'static [u8]>::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("http status {}", resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules() {
        let ok = JwksUrl::parse("https://idp.example.com/.well-known/jwks.json");
        assert!(
            matches!(&ok, Ok(u) if u.tls && u.port == 443 && u.host == "idp.example.com"
            && u.path_and_query == "/.well-known/jwks.json")
        );
        assert!(
            matches!(JwksUrl::parse("http://127.0.0.1:8080/jwks"), Ok(u) if !u.tls && u.port == 8080)
        );
        assert!(matches!(JwksUrl::parse("http://localhost/jwks"), Ok(u) if u.port == 80));
        assert!(
            matches!(JwksUrl::parse("http://[::1]:9/k"), Ok(u) if u.host == "::1" && u.authority == "[::1]:9")
        );
        assert!(
            matches!(JwksUrl::parse("https://idp.example.com"), Ok(u) if u.path_and_query == "/")
        );
        for bad in [
            "http://idp.example.com/jwks",
            "http://10.0.0.1/jwks",
            "http://127.0.0.1.nip.io/jwks",
            "ftp://idp.example.com/jwks",
            "https://user:pw@idp.example.com/jwks",
            "/jwks",
            "not a url",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
