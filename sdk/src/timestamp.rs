//! `google.protobuf.Timestamp` to and from `SystemTime`, failing closed on what the server got wrong.

use std::time::SystemTime;

use crate::Error;

/// A timestamp the server must send; `field` names it in the error.
pub(crate) fn required(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<SystemTime, Error> {
    optional(timestamp, field)?
        .ok_or_else(|| Error::Protocol(format!("the broker sent no `{field}`")))
}

/// A timestamp the server may leave out.
pub(crate) fn optional(
    timestamp: Option<prost_types::Timestamp>,
    field: &str,
) -> Result<Option<SystemTime>, Error> {
    timestamp
        .map(|t| {
            SystemTime::try_from(t)
                .map_err(|e| Error::Protocol(format!("the broker sent an invalid `{field}`: {e}")))
        })
        .transpose()
}

/// `None` for the empty string proto3 uses to mean "absent".
pub(crate) fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn converts_and_names_the_missing_field() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        assert_eq!(
            required(Some(ts), "created_at"),
            Ok(UNIX_EPOCH + Duration::new(1_700_000_000, 5))
        );
        assert_eq!(
            required(None, "created_at"),
            Err(Error::Protocol("the broker sent no `created_at`".into()))
        );
        assert_eq!(optional(None, "decided_at"), Ok(None));
    }

    #[test]
    fn empty_strings_are_absent() {
        assert_eq!(non_empty(String::new()), None);
        assert_eq!(non_empty("x".into()), Some("x".into()));
    }
}
