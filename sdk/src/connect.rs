//! Building the channel to the broker, with the SDK's defaults.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::Error;

/// How long establishing a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle connection is checked with HTTP/2 pings.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is considered dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// An [`Endpoint`] for `uri` (e.g. `http://127.0.0.1:50051`) with the SDK's defaults: connect timeout,
/// TCP no-delay, HTTP/2 keep-alive, and for `https://` rustls with the roots enabled in tonic's features.
///
/// Adjust it (e.g. `.tls_config(ClientTlsConfig::new().ca_certificate(..))` for a private CA or mTLS),
/// connect it, and hand the channel to [`Client::from_channel`](crate::Client::from_channel).
pub fn endpoint(uri: impl Into<String>) -> Result<Endpoint, Error> {
    let uri = uri.into();
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| Error::Transport(format!("invalid endpoint `{uri}`: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    match endpoint.uri().scheme_str() {
        Some("https") => endpoint
            .tls_config(ClientTlsConfig::new().with_enabled_roots())
            .map_err(|e| Error::transport(&e)),
        Some("http") => Ok(endpoint),
        _ => Err(Error::Transport(format!(
            "endpoint `{uri}` must start with `http://` or `https://`"
        ))),
    }
}

/// Connects now, so that a wrong address fails here rather than on the first call.
pub(crate) async fn connect(uri: impl Into<String>) -> Result<Channel, Error> {
    endpoint(uri)?
        .connect()
        .await
        .map_err(|e| Error::transport(&e))
}

/// Connects on first use (and reconnects as needed); fails only on an invalid endpoint.
pub(crate) fn connect_lazy(uri: impl Into<String>) -> Result<Channel, Error> {
    Ok(endpoint(uri)?.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_endpoints_that_are_not_http_urls() {
        assert!(matches!(endpoint("not a uri"), Err(Error::Transport(_))));
        assert!(matches!(
            endpoint("ftp://127.0.0.1:50051"),
            Err(Error::Transport(m)) if m.contains("http://")
        ));
        assert!(matches!(
            endpoint("127.0.0.1:50051"),
            Err(Error::Transport(_))
        ));
    }

    #[test]
    fn accepts_http_and_https() {
        assert!(endpoint("http://127.0.0.1:50051").is_ok());
        assert!(endpoint("https://broker.internal:443").is_ok());
    }
}
