//! Authentication: every call to a broker service carries `authorization: Bearer <JWT>`. The verified
//! [`Principal`] goes into the request's extensions; handlers take it from there and name the role they need.

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::status;
use crate::auth::{Principal, TokenError, Verifier};

#[derive(Clone)]
pub struct Authenticate {
    verifier: Verifier,
}

impl Authenticate {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

/// The token from an `authorization` header value: `Bearer <token>` (scheme case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| status::unauthenticated(&TokenError::Missing))?;
        let value = header
            .to_str()
            .map_err(|_| status::unauthenticated(&TokenError::Malformed))?;
        let token = bearer(value).ok_or_else(|| status::unauthenticated(&TokenError::Malformed))?;
        let principal = self
            .verifier
            .verify(token)
            .map_err(|e| match e.token_error() {
                Some(t) => status::unauthenticated(t),
                None => {
                    tracing::error!(error = %e, "token verification failed for a non-token reason");
                    status::unauthenticated(&TokenError::InvalidSignature)
                }
            })?;
        req.extensions_mut().insert(principal);
        Ok(req)
    }
}

/// The caller of an authenticated request.
pub fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| status::unauthenticated(&TokenError::Missing))
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_scheme_is_required() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
