//! sqlx's way to TLS: a Unix socket of the store's own, in a fresh directory only this process's user can
//! enter, where each connection sqlx opens (plaintext, `sslmode=disable`) is carried to the server over
//! a connection that [`Tls::open`] made, encrypted and checked as `sslmode` asks. sqlx's own TLS is not
//! used (see [`super::pg_tls`]). Only when the mode is not `disable`: a plaintext store connects directly.
//!
//! When the server cannot be reached as the mode asks, the tunnel answers sqlx's startup message with a
//! Postgres error naming the cause (SQLSTATE 08001), so the failure reads the same as a direct one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use super::pg_tls::{PgUrl, SslMode, Tls, Upstream};
use super::Error;

/// How the store's connections reach a Postgres server.
pub(crate) struct PgRoutes {
    /// What sqlx connects to: the server itself in plaintext (`disable`), else the tunnel.
    pub(crate) sqlx_url: String,
    /// What the audit writer's tokio-postgres connection parses (the URL without its TLS parameters).
    pub(crate) writer_url: String,
    pub(crate) tls: Arc<Tls>,
    /// Kept alive by everything that connects through it.
    pub(crate) tunnel: Option<Arc<Tunnel>>,
}

impl PgRoutes {
    /// Reads the TLS parameters of `url` and their files, and opens the tunnel when TLS may be used.
    pub(crate) fn new(url: &str, connect_timeout: Duration) -> Result<PgRoutes, Error> {
        let parsed = PgUrl::parse(url)?;
        let tls = Arc::new(parsed.load()?);
        let plain = parsed.plain().to_owned();
        let (sqlx_url, tunnel) = match (parsed.mode(), parsed.tcp()) {
            (SslMode::Disable, _) | (_, None) => {
                // Explicit: sqlx would otherwise take `PGSSLMODE` from the environment.
                let sep = if plain.contains('?') { '&' } else { '?' };
                (format!("{plain}{sep}sslmode=disable"), None)
            }
            (_, Some((host, port))) => {
                let tunnel = Tunnel::start(tls.clone(), host, port, connect_timeout)?;
                (tunnel.url_for_sqlx(&plain, port), Some(Arc::new(tunnel)))
            }
        };
        Ok(PgRoutes {
            sqlx_url,
            writer_url: plain,
            tls,
            tunnel,
        })
    }
}

/// The SQLSTATE of the tunnel's refusals: sqlclient_unable_to_establish_sqlconnection, a client-side
/// code that no server sends.
pub(crate) const REFUSED_SQLSTATE: &str = "08001";
/// The longest startup message read before answering with an error (Postgres's own limit is 10,000).
const MAX_STARTUP: u32 = 10_000;

/// The tunnel of one store. Dropped, it stops accepting and removes its socket; connections already
/// carried end when either side closes.
pub(crate) struct Tunnel {
    dir: PathBuf,
    socket: PathBuf,
    accepting: tokio::task::AbortHandle,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("socket", &self.socket)
            .finish()
    }
}

struct Route {
    tls: Arc<Tls>,
    host: String,
    port: u16,
    connect_timeout: Duration,
}

impl Tunnel {
    /// Listens on a socket named as Postgres names its own (`<dir>/.s.PGSQL.<port>`), so that sqlx reaches
    /// it with `host=<dir>&port=<port>`.
    pub(crate) fn start(
        tls: Arc<Tls>,
        host: &str,
        port: u16,
        connect_timeout: Duration,
    ) -> Result<Tunnel, Error> {
        let dir = private_dir()?;
        let socket = dir.join(format!(".s.PGSQL.{port}"));
        let listener = UnixListener::bind(&socket).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            Error::unavailable(format!(
                "cannot listen on the postgres TLS tunnel's socket `{}`: {e}",
                socket.display()
            ))
        })?;
        let route = Arc::new(Route {
            tls,
            host: host.to_owned(),
            port,
            connect_timeout,
        });
        let accepting = tokio::spawn(accept(listener, route)).abort_handle();
        Ok(Tunnel {
            dir,
            socket,
            accepting,
        })
    }

    /// `url` (without TLS parameters) pointed at the tunnel: sqlx takes the last `host` and `port`.
    pub(crate) fn url_for_sqlx(&self, url: &str, port: u16) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{sep}sslmode=disable&host={}&port={port}",
            query_encode(&self.dir)
        )
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.accepting.abort();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A new directory under the temporary directory, mode 0700: no other user can reach the socket (with
/// `sslcert`, the tunnel's connections log in as the broker).
fn private_dir() -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = std::env::temp_dir().join(format!(
        "broker-pg-{}",
        hex::encode(rand::random::<[u8; 8]>())
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot create the postgres TLS tunnel's directory `{}`: {e}",
                dir.display()
            ))
        })?;
    Ok(dir)
}

async fn accept(listener: UnixListener, route: Arc<Route>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(carry(conn, route.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most likely: sqlx's connect fails and the pool retries.
                tracing::warn!(error = %e, "postgres TLS tunnel cannot accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Carries one sqlx connection to the server, or answers it with why it cannot.
async fn carry(mut down: UnixStream, route: Arc<Route>) {
    let opened = tokio::time::timeout(
        route.connect_timeout,
        route.tls.open(&route.host, route.port),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "store.database_url {}: no connection to `{}:{}` within {:?}",
            route.tls.label(),
            route.host,
            route.port,
            route.connect_timeout
        ))
    });
    let carried = match opened {
        Ok(Upstream::Plain(mut up)) => tokio::io::copy_bidirectional(&mut down, &mut up).await,
        Ok(Upstream::Tls(mut up)) => tokio::io::copy_bidirectional(&mut down, &mut *up).await,
        Err(message) => {
            tracing::warn!(error = %message, "postgres TLS tunnel cannot reach the database");
            let _ = tokio::time::timeout(route.connect_timeout, refuse(&mut down, &message)).await;
            return;
        }
    };
    if let Err(e) = carried {
        tracing::debug!(error = %e, "postgres TLS tunnel connection ended");
    }
}

/// Reads the startup message (closing a socket with unread data resets it, and the error would be lost)
/// and answers with a FATAL `ErrorResponse`.
async fn refuse(down: &mut UnixStream, message: &str) -> std::io::Result<()> {
    let len = down.read_u32().await?;
    let rest = len
        .checked_sub(4)
        .filter(|n| *n <= MAX_STARTUP)
        .unwrap_or(0);
    let mut skip = vec![0; usize::try_from(rest).unwrap_or(0)];
    down.read_exact(&mut skip).await?;
    down.write_all(&error_response(message)).await?;
    down.shutdown().await
}

/// A Postgres `ErrorResponse`: FATAL, SQLSTATE 08001 (the client cannot establish the connection).
fn error_response(message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', REFUSED_SQLSTATE),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend(value.bytes().filter(|b| *b != 0));
        fields.push(0);
    }
    fields.push(0);
    let len = u32::try_from(fields.len() + 4).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(fields.len() + 5);
    out.push(b'E');
    out.extend(len.to_be_bytes());
    out.extend(fields);
    out
}

/// `path` as a query value: everything but unreserved characters and `/` percent-encoded.
fn query_encode(path: &Path) -> String {
    let mut out = String::new();
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(*b))
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_response_is_a_postgres_message() {
        let m = error_response("no\0pe");
        assert_eq!(m[0], b'E');
        assert_eq!(
            u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize,
            m.len() - 1
        );
        assert!(m.ends_with(b"Mnope\0\0"));
        assert_eq!(query_encode(Path::new("/tmp/a b&c")), "/tmp/a%20b%26c");
    }
}
