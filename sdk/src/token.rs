//! Where the bearer token comes from, and how it is put on a request.
//!
//! The SDK asks its [`TokenSource`] before every RPC, so a source may rotate tokens at any time.

use std::fmt;
use std::sync::{Arc, RwLock};

use tonic::metadata::{Ascii, MetadataValue};

use crate::Error;

/// The metadata key the broker reads the bearer token from.
pub const AUTHORIZATION: &str = "authorization";

/// Where the bearer token comes from; called before every RPC so tokens can rotate.
///
/// An error from [`token`](TokenSource::token) fails the RPC with [`Error::Token`] before anything is
/// sent.
pub trait TokenSource: Send + Sync + 'static {
    /// The token to send, without the `Bearer ` prefix.
    fn token(&self) -> Result<String, Error>;
}

impl TokenSource for String {
    fn token(&self) -> Result<String, Error> {
        Ok(self.clone())
    }
}

impl TokenSource for &'static str {
    fn token(&self) -> Result<String, Error> {
        Ok((*self).to_owned())
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Arc<T> {
    fn token(&self) -> Result<String, Error> {
        (**self).token()
    }
}

impl<T: TokenSource + ?Sized> TokenSource for Box<T> {
    fn token(&self) -> Result<String, Error> {
        (**self).token()
    }
}

/// A token that never changes. Its `Debug` output does not show the token.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl StaticToken {
    /// Wraps `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> Result<String, Error> {
        Ok(self.0.clone())
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

/// Adapts a closure into a [`TokenSource`], e.g. one that reads a file a token agent refreshes.
///
/// ```
/// use broker_sdk::{Error, TokenFn};
/// let tokens = TokenFn::new(|| {
///     std::env::var("BROKER_TOKEN").map_err(|e| Error::Token(format!("`BROKER_TOKEN`: {e}")))
/// });
/// # let _ = tokens;
/// ```
#[derive(Clone)]
pub struct TokenFn<F>(F);

impl<F> TokenFn<F>
where
    F: Fn() -> Result<String, Error> + Send + Sync + 'static,
{
    /// Wraps `f`, which is called before every RPC.
    pub fn new(f: F) -> Self {
        Self(f)
    }
}

impl<F> TokenSource for TokenFn<F>
where
    F: Fn() -> Result<String, Error> + Send + Sync + 'static,
{
    fn token(&self) -> Result<String, Error> {
        (self.0)()
    }
}

impl<F> fmt::Debug for TokenFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenFn(..)")
    }
}

/// A token that can be replaced while clients use it (clones share the same token).
///
/// ```
/// use broker_sdk::{SharedToken, TokenSource};
/// let tokens = SharedToken::new("first");
/// let for_the_client = tokens.clone();
/// tokens.set("second");
/// assert_eq!(for_the_client.token().ok().as_deref(), Some("second"));
/// ```
#[derive(Clone)]
pub struct SharedToken(Arc<RwLock<String>>);

impl SharedToken {
    /// Starts with `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(token.into())))
    }

    /// Replaces the token; the next RPC of every client holding a clone uses it.
    pub fn set(&self, token: impl Into<String>) {
        let mut guard = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = token.into();
    }
}

impl TokenSource for SharedToken {
    fn token(&self) -> Result<String, Error> {
        let guard = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(guard.clone())
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedToken(<redacted>)")
    }
}

/// `Bearer <token>` as a sensitive metadata value (so it is never logged by the HTTP stack).
pub(crate) fn bearer(tokens: &dyn TokenSource) -> Result<MetadataValue<Ascii>, Error> {
    let token = tokens.token()?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::Token(
            "the token source returned an empty token".into(),
        ));
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::Token("the token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A tonic interceptor that adds `authorization: Bearer <token>`, for callers who use the raw
/// [`proto`](crate::proto) clients:
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use broker_sdk::{proto::agent_service_client::AgentServiceClient, BearerAuth};
/// let channel = broker_sdk::endpoint("http://127.0.0.1:50051")?.connect().await?;
/// let raw = AgentServiceClient::with_interceptor(channel, BearerAuth::new("my-jwt".to_owned()));
/// # let _ = raw; Ok(()) }
/// ```
///
/// A failing token source becomes an `UNAUTHENTICATED` status, and the request is not sent.
#[derive(Clone)]
pub struct BearerAuth(Arc<dyn TokenSource>);

impl BearerAuth {
    /// Uses `tokens` for every request.
    pub fn new(tokens: impl TokenSource) -> Self {
        Self(Arc::new(tokens))
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let value =
            bearer(self.0.as_ref()).map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
        request.metadata_mut().insert(AUTHORIZATION, value);
        Ok(request)
    }
}

impl fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerAuth(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn bearer_prefixes_the_token() {
        let value = bearer(&StaticToken::new("abc.def"))
            .ok()
            .and_then(|v| v.to_str().ok().map(str::to_owned));
        assert_eq!(value.as_deref(), Some("Bearer abc.def"));
    }

    #[test]
    fn empty_or_unprintable_tokens_are_token_errors() {
        assert!(matches!(
            bearer(&StaticToken::new("  ")),
            Err(Error::Token(_))
        ));
        assert!(matches!(
            bearer(&StaticToken::new("a\nb")),
            Err(Error::Token(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        assert!(!format!("{:?}", StaticToken::new("s3cret")).contains("s3cret"));
        assert!(!format!("{:?}", SharedToken::new("s3cret")).contains("s3cret"));
        assert!(!format!("{:?}", BearerAuth::new("s3cret")).contains("s3cret"));
    }

    #[test]
    fn interceptor_adds_the_header_or_refuses() {
        let mut ok = BearerAuth::new("tok");
        let request = ok.call(tonic::Request::new(()));
        let header = request
            .ok()
            .and_then(|r| r.metadata().get(AUTHORIZATION).cloned());
        assert_eq!(
            header.as_ref().and_then(|v| v.to_str().ok()),
            Some("Bearer tok")
        );

        let mut failing = BearerAuth::new(TokenFn::new(|| Err(Error::Token("expired".into()))));
        let status = failing.call(tonic::Request::new(())).err();
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unauthenticated));
    }
}
