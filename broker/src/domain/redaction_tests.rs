use serde_json::{json, Value};

use super::redaction::{bounded, parts, Redactor, Sensitive, REDACTED, TRUNCATED};

fn defaults() -> Redactor {
    Redactor::new(&crate::config::AuditConfig::default().redact_fields)
}

#[test]
fn names_split_into_words_at_separators_camel_case_acronyms_and_digits() {
    fn split(n: &str) -> Vec<&str> {
        parts(n).collect()
    }
    assert_eq!(split("access_token"), ["access", "token"]);
    assert_eq!(split("apiKey"), ["api", "Key"]);
    assert_eq!(split("APIKey"), ["API", "Key"]);
    assert_eq!(split("X-Auth-Token"), ["X", "Auth", "Token"]);
    assert_eq!(split("private.key"), ["private", "key"]);
    assert_eq!(split("oauth2Token"), ["oauth", "2", "Token"]);
    assert_eq!(split("__db__password__"), ["db", "password"]);
    assert_eq!(split("monkey"), ["monkey"]);
    assert_eq!(split("ÉtéPass"), ["Été", "Pass"]);
    assert_eq!(split("--"), Vec::<&str>::new());
}

#[test]
fn secret_names_are_found_by_their_parts_not_by_whole_names() {
    let r = Redactor::new(&[]);
    for secret in [
        "access_token",
        "client_secret",
        "db_password",
        "refreshToken",
        "api_key",
        "apiKey",
        "API_KEY",
        "private-key",
        "x-api-key",
        "Authorization",
        "auth_header",
        "session_token",
        "set-cookie",
        "otp",
        "pin",
        "user_ssn",
        "passwd",
        "accesstoken",
        "clientsecret",
        "dbpassword",
        "privatekey",
        "passwordHash",
        "aws_credentials",
        "card_cvv",
    ] {
        assert!(r.is_secret_name(secret), "`{secret}` should be redacted");
    }
    for readable in [
        "monkey",
        "keyboard",
        "keyword",
        "author",
        "authority",
        "tokenizer",
        "secretary",
        "spinner",
        "query",
        "path",
        "to",
        "amount",
        "",
    ] {
        assert!(
            !r.is_secret_name(readable),
            "`{readable}` should stay readable"
        );
    }
}

#[test]
fn configured_names_match_as_a_run_of_parts() {
    let r = Redactor::new(&["card_number".into(), "IBAN".into(), "".into()]);
    for secret in [
        "card_number",
        "cardNumber",
        "credit_card_number",
        "iban",
        "payer-IBAN",
    ] {
        assert!(r.is_secret_name(secret), "`{secret}`");
    }
    // Names with more parts than fit on the stack, the run across the spill.
    assert!(r.is_secret_name("a_b_c_d_e_f_g_credit_card_number"));
    assert!(r.is_secret_name("a.b.c.d.e.f.g.h.i.j.access_token"));
    assert!(!r.is_secret_name("a.b.c.d.e.f.g.h.i.j.k.l"));
    for readable in ["number", "card", "number_card", "ibanking"] {
        assert!(!r.is_secret_name(readable), "`{readable}`");
    }
}

#[test]
fn redaction_reaches_every_depth_and_arrays_of_objects() {
    let args = json!({
        "to": "x",
        "Password": "p",
        "nested": [{"api_key": "k", "ok": 1}, {"deeper": {"client_secret": "s", "n": [{"db_password": "d"}]}}],
        "headers": [{"name": "Authorization", "value": "Bearer t"}, {"name": "Accept", "value": "text/html"}],
        "auth": {"user": "u", "pass": "whole object"},
    });
    let red = defaults().redact(&args, None);
    assert_eq!(
        red,
        json!({
            "to": "x",
            "Password": REDACTED,
            "nested": [{"api_key": REDACTED, "ok": 1}, {"deeper": {"client_secret": REDACTED, "n": [{"db_password": REDACTED}]}}],
            "headers": [{"name": "Authorization", "value": REDACTED}, {"name": "Accept", "value": "text/html"}],
            "auth": REDACTED,
        })
    );
}

#[test]
fn schema_marked_fields_are_redacted_whatever_their_name() {
    let mut inner = Sensitive::default();
    inner.fields.insert(
        "number".into(),
        Sensitive {
            all: true,
            ..Sensitive::default()
        },
    );
    let mut marked = Sensitive::default();
    marked.fields.insert(
        "account".into(),
        Sensitive {
            all: true,
            ..Sensitive::default()
        },
    );
    marked.fields.insert("cards".into(), inner);
    assert_eq!(marked.paths(), ["account", "cards.number"]);
    let args =
        json!({"account": {"id": 7}, "cards": [{"number": "4111", "brand": "visa"}], "memo": "m"});
    assert_eq!(
        Redactor::new(&[]).redact(&args, Some(&marked)),
        json!({"account": REDACTED, "cards": [{"number": REDACTED, "brand": "visa"}], "memo": "m"})
    );
    let everything = Sensitive {
        all: true,
        ..Sensitive::default()
    };
    assert_eq!(
        Redactor::new(&[]).redact(&args, Some(&everything)),
        json!(REDACTED)
    );
}

#[test]
fn a_long_preview_is_cut_to_the_bound_as_json_that_says_so() {
    let short = r#"{"query":"q"}"#.to_owned();
    assert_eq!(bounded(short.clone(), 2048), short);

    // Quotes and control characters grow when escaped; the bound holds for what is stored.
    let body: String = "\"\u{1}é".repeat(100_000);
    let redacted = serde_json::to_string(&json!({ "body": body, "token": REDACTED })).unwrap();
    let kept = bounded(redacted.clone(), 2048);
    assert!(kept.len() <= 2048, "{}", kept.len());
    assert!(kept.len() > 1900, "{}", kept.len());
    let v: Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(v[TRUNCATED]["bytes"], json!(redacted.len()));
    let preview = v[TRUNCATED]["preview"].as_str().unwrap();
    assert!(redacted.starts_with(preview));
    assert!(!preview.is_empty());
}
