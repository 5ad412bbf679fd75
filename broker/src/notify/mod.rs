//! Notifications to people: when a tool call needs human approval, the broker tells a configured
//! webhook so approvers hear about it. Delivery is best effort and never slows or fails the
//! decision path: [`Webhook::notify`] only queues; a bounded queue overflows by dropping (counted
//! in [`WebhookStats`]); queued notifications are lost if the process stops. The approval itself
//! lives in the store, so a lost notification delays an approval but never grants one.
//!
//! # What a receiver gets
//!
//! One `POST <url>` per attempt, with the JSON body
//!
//! ```json
//! {"event": "approval.requested", "delivery_id": "<32 hex>", "sent_at": "<RFC 3339, UTC>", "data": {}}
//! ```
//!
//! and the headers
//!
//! | header               | value                                                           |
//! |----------------------|-----------------------------------------------------------------|
//! | `Content-Type`       | `application/json`                                              |
//! | `X-Broker-Event`     | the event name (ASCII letters, digits, `.`, `_`, `-`)           |
//! | `X-Broker-Delivery`  | the delivery id: the same for every attempt of one notification |
//! | `X-Broker-Timestamp` | Unix seconds when this attempt was signed (matches `sent_at`)   |
//! | `X-Broker-Signature` | `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`    |
//! | `X-Broker-Attempt`   | the attempt number, from 1 (informational, not signed)          |
//!
//! Answer 2xx once the notification is accepted. 408, 429 (a `Retry-After` in seconds is honoured
//! up to `max_backoff`), 5xx, connection errors and timeouts are retried with exponential backoff
//! and jitter up to `max_attempts`; any other status (3xx, other 4xx) is given up on at once.
//! Redirects are not followed.
//!
//! # Verifying a delivery
//!
//! The secret is the decoded content of `secret_file` (hex text is decoded to bytes; other text is
//! taken with surrounding whitespace trimmed; anything else as raw bytes); at least 32 bytes.
//!
//! 1. Take `X-Broker-Timestamp` and refuse the request if it is not within a few minutes of your
//!    clock (five is a good window): this is what makes a captured request useless later.
//! 2. Compute HMAC-SHA256 with the secret over the timestamp, a `.`, and the body bytes exactly
//!    as received (before any JSON parsing), hex-encode it, and compare it in constant time with
//!    the part of `X-Broker-Signature` after `sha256=`. [`verify_signature`] does this step.
//! 3. Optionally remember `X-Broker-Delivery` for the length of the window and ignore repeats:
//!    retries (and replays inside the window) carry the same id.

pub mod webhook;

pub use webhook::{verify_signature, Error, Webhook, WebhookConfig, WebhookStats};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio::net::{TcpListener, TcpStream};

    use super::webhook::MAX_CONCURRENT_DELIVERIES;
    use super::*;

    const SECRET: [u8; 32] = *b"0123456789abcdefghijklmnopqrstuv";

    /// One request as the receiver saw it; header names lowercased.
    #[derive(Clone, Debug)]
    struct Received {
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> &str {
            self.headers
                .get(name)
                .map(String::as_str)
                .unwrap_or_else(|| panic!("no `{name}` header in {:?}", self.headers))
        }
    }

    enum Reply {
        Status(u16),
        /// Read the request, then never answer (keeping the connection open).
        Hang,
    }

    /// A minimal HTTP/1.1 receiver on 127.0.0.1:0; `script(n, request)` answers the n-th request.
    struct Receiver {
        url: String,
        seen: Arc<Mutex<Vec<Received>>>,
    }

    impl Receiver {
        async fn start(
            script: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
        ) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(script);
            let seen2 = seen.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let seen = seen2.clone();
                    let script = script.clone();
                    tokio::spawn(async move {
                        let (stream, req) = match read_request(stream).await {
                            Some(r) => r,
                            None => return,
                        };
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            seen.push(req.clone());
                            seen.len() - 1
                        };
                        match script(n, &req) {
                            Reply::Status(code) => {
                                let resp = format!(
                                    "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                );
                                write_all(&stream, resp.as_bytes()).await;
                            }
                            Reply::Hang => {
                                std::future::pending::<()>().await;
                                drop(stream);
                            }
                        }
                    });
                }
            });
            Receiver { url, seen }
        }

        fn seen(&self) -> Vec<Received> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Reads into `buf`; `None` at end of stream. (No tokio `io-util`: readiness + `try_read`.)
    async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 4096];
        loop {
            stream.readable().await.ok()?;
            match stream.try_read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Some(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    async fn write_all(stream: &TcpStream, mut data: &[u8]) {
        while !data.is_empty() {
            if stream.writable().await.is_err() {
                return;
            }
            match stream.try_write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    async fn read_request(stream: TcpStream) -> Option<(TcpStream, Received)> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            read_some(&stream, &mut buf).await?;
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap();
        assert!(
            request_line.starts_with("POST /hooks/approvals HTTP/1.1"),
            "{request_line}"
        );
        let headers: HashMap<String, String> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            read_some(&stream, &mut body).await?;
        }
        Some((stream, Received { headers, body }))
    }

    fn secret_file(secret: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(secret).unwrap();
        f.flush().unwrap();
        f
    }

    /// Tiny backoffs so retries take milliseconds.
    fn config(url: &str, secret: &tempfile::NamedTempFile) -> WebhookConfig {
        WebhookConfig {
            url: url.to_owned(),
            secret_file: secret.path().to_path_buf(),
            timeout: Duration::from_secs(5),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(20),
            queue_capacity: 16,
        }
    }

    /// Polls until `done(stats)` holds, for at most 10 s.
    async fn wait_for(hook: &Webhook, done: impl Fn(&WebhookStats) -> bool) -> WebhookStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = hook.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "gave up waiting: {stats:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn delivers_a_signed_notification() {
        let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
        let secret = secret_file(&SECRET);
        let hook = Webhook::start(&config(&receiver.url, &secret)).unwrap();
        let data =
            serde_json::json!({"approval_id": "ap_1", "tool": "shell.exec", "args": {"cmd": "ls"}});
        assert!(hook.notify("approval.requested", data.clone()));

        let stats = wait_for(&hook, |s| s.delivered == 1).await;
        assert_eq!(
            stats,
            WebhookStats {
                delivered: 1,
                failed: 0,
                dropped: 0,
                retried: 0
            }
        );
        let seen = receiver.seen();
        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.header("content-type"), "application/json");
        assert_eq!(req.header("x-broker-event"), "approval.requested");
        assert_eq!(req.header("x-broker-attempt"), "1");

        let ts = req.header("x-broker-timestamp");
        let sig = req.header("x-broker-signature");
        assert!(verify_signature(&SECRET, ts, &req.body, sig));
        assert!(!verify_signature(&[9u8; 32], ts, &req.body, sig));
        let mut changed = req.body.clone();
        changed.push(b' ');
        assert!(!verify_signature(&SECRET, ts, &changed, sig));
        let other_ts = (ts.parse::<i64>().unwrap() + 1).to_string();
        assert!(!verify_signature(&SECRET, &other_ts, &req.body, sig));

        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["event"], "approval.requested");
        assert_eq!(body["data"], data);
        let id = body["delivery_id"].as_str().unwrap();
        assert_eq!(id, req.header("x-broker-delivery"));
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let sent_at =
            chrono::DateTime::parse_from_rfc3339(body["sent_at"].as_str().unwrap()).unwrap();
        assert_eq!(sent_at.timestamp().to_string(), ts);
        let now = chrono::Utc::now().timestamp();
        assert!((now - sent_at.timestamp()).abs() < 60);
    }

    #[tokio::test]
    async fn retries_500_and_503_then_delivers() {
        let receiver = Receiver::start(|n, _| match n {
            0 => Reply::Status(500),
            1 => Reply::Status(503),
            _ => Reply::Status(200),
        })
        .await;
        let secret = secret_file(&SECRET);
        let hook = Webhook::start(&config(&receiver.url, &secret)).unwrap();
        assert!(hook.notify("approval.requested", serde_json::json!({"n": 1})));

        let stats = wait_for(&hook, |s| s.delivered == 1).await;
        assert_eq!(stats.retried, 2);
        assert_eq!(stats.failed, 0);
        let seen = receiver.seen();
        assert_eq!(seen.len(), 3);
        let ids: Vec<&str> = seen.iter().map(|r| r.header("x-broker-delivery")).collect();
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "one id across retries: {ids:?}"
        );
        let attempts: Vec<&str> = seen.iter().map(|r| r.header("x-broker-attempt")).collect();
        assert_eq!(attempts, ["1", "2", "3"]);
        for r in &seen {
            assert!(verify_signature(
                &SECRET,
                r.header("x-broker-timestamp"),
                &r.body,
                r.header("x-broker-signature")
            ));
        }
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_on_persistent_500() {
        let receiver = Receiver::start(|_, _| Reply::Status(500)).await;
        let secret = secret_file(&SECRET);
        let cfg = WebhookConfig {
            max_attempts: 3,
            ..config(&receiver.url, &secret)
        };
        let hook = Webhook::start(&cfg).unwrap();
        assert!(hook.notify("approval.requested", serde_json::json!({})));

        let stats = wait_for(&hook, |s| s.failed == 1).await;
        assert_eq!(stats.delivered, 0);
        assert_eq!(stats.retried, 2);
        // Nothing after giving up.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(receiver.seen().len(), 3);
        assert_eq!(hook.stats(), stats);
    }

    #[tokio::test]
    async fn gives_up_at_once_on_400() {
        let receiver = Receiver::start(|_, _| Reply::Status(400)).await;
        let secret = secret_file(&SECRET);
        let hook = Webhook::start(&config(&receiver.url, &secret)).unwrap();
        assert!(hook.notify("approval.requested", serde_json::json!({})));

        let stats = wait_for(&hook, |s| s.failed == 1).await;
        assert_eq!(stats.retried, 0);
        assert_eq!(stats.delivered, 0);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(receiver.seen().len(), 1);
    }

    #[tokio::test]
    async fn retries_408_and_429() {
        let receiver = Receiver::start(|n, _| match n {
            0 => Reply::Status(408),
            1 => Reply::Status(429),
            _ => Reply::Status(202),
        })
        .await;
        let secret = secret_file(&SECRET);
        let hook = Webhook::start(&config(&receiver.url, &secret)).unwrap();
        assert!(hook.notify("approval.requested", serde_json::json!({})));
        let stats = wait_for(&hook, |s| s.delivered == 1).await;
        assert_eq!(stats.retried, 2);
        assert_eq!(receiver.seen().len(), 3);
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_given_up() {
        // Bind then drop: nothing listens on that port any more.
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let secret = secret_file(&SECRET);
        let cfg = WebhookConfig {
            max_attempts: 2,
            ..config(&format!("http://127.0.0.1:{port}/hooks/approvals"), &secret)
        };
        let hook = Webhook::start(&cfg).unwrap();
        assert!(hook.notify("approval.requested", serde_json::json!({})));
        let stats = wait_for(&hook, |s| s.failed == 1).await;
        assert_eq!(stats.retried, 1);
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out_and_is_retried() {
        let receiver = Receiver::start(|n, _| {
            if n == 0 {
                Reply::Hang
            } else {
                Reply::Status(200)
            }
        })
        .await;
        let secret = secret_file(&SECRET);
        let cfg = WebhookConfig {
            timeout: Duration::from_millis(200),
            ..config(&receiver.url, &secret)
        };
        let hook = Webhook::start(&cfg).unwrap();
        let started = Instant::now();
        assert!(hook.notify("approval.requested", serde_json::json!({})));

        let stats = wait_for(&hook, |s| s.delivered == 1).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(stats.retried, 1);
        assert_eq!(stats.failed, 0);
        let seen = receiver.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].header("x-broker-attempt"), "2");
        assert_eq!(
            seen[0].header("x-broker-delivery"),
            seen[1].header("x-broker-delivery")
        );
    }

    #[tokio::test]
    async fn a_slow_delivery_does_not_stall_the_others() {
        let receiver = Receiver::start(|_, req| {
            if req.header("x-broker-event") == "slow" {
                Reply::Hang
            } else {
                Reply::Status(200)
            }
        })
        .await;
        let secret = secret_file(&SECRET);
        let cfg = WebhookConfig {
            timeout: Duration::from_secs(60),
            ..config(&receiver.url, &secret)
        };
        let hook = Webhook::start(&cfg).unwrap();
        assert!(hook.notify("slow", serde_json::json!({})));
        assert!(hook.notify("fast", serde_json::json!({})));
        assert!(hook.notify("fast", serde_json::json!({})));
        // Well before the slow one's 60 s timeout.
        let stats = wait_for(&hook, |s| s.delivered == 2).await;
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.retried, 0);
    }

    #[tokio::test]
    async fn notify_drops_when_the_queue_is_full_and_never_blocks() {
        let receiver = Receiver::start(|_, _| Reply::Hang).await;
        let secret = secret_file(&SECRET);
        let cfg = WebhookConfig {
            timeout: Duration::from_secs(60),
            queue_capacity: 1,
            ..config(&receiver.url, &secret)
        };
        let hook = Webhook::start(&cfg).unwrap();
        // Fill every delivery slot with a request the receiver holds open...
        for _ in 0..MAX_CONCURRENT_DELIVERIES {
            assert!(hook.notify("approval.requested", serde_json::json!({})));
            let before = receiver.seen().len();
            let deadline = Instant::now() + Duration::from_secs(10);
            while receiver.seen().len() == before {
                assert!(Instant::now() < deadline, "receiver never saw the request");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(receiver.seen().len(), MAX_CONCURRENT_DELIVERIES);
        // ...then the queue (capacity 1)...
        assert!(hook.notify("approval.requested", serde_json::json!({})));
        // ...and the next one is dropped, at once.
        let started = Instant::now();
        let queued = hook.notify(
            "approval.requested",
            serde_json::json!({"big": "x".repeat(1000)}),
        );
        let took = started.elapsed();
        assert!(!queued);
        // A blocking notify would wait for a slot (60 s here); the bound is loose on purpose.
        assert!(took < Duration::from_secs(1), "notify took {took:?}");
        assert!(!hook.notify("approval.requested", serde_json::json!({})));

        let stats = hook.stats();
        assert_eq!(stats.dropped, 2);
        assert_eq!(stats.delivered + stats.failed, 0);
        // The queued one never reached the receiver: no slot was free.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(receiver.seen().len(), MAX_CONCURRENT_DELIVERIES);
    }

    #[tokio::test]
    async fn bad_event_names_are_dropped() {
        let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
        let secret = secret_file(&SECRET);
        let hook = Webhook::start(&config(&receiver.url, &secret)).unwrap();
        assert!(!hook.notify("bad\r\nx-injected: 1", serde_json::json!({})));
        assert_eq!(hook.stats().dropped, 1);
    }

    #[tokio::test]
    async fn start_refuses_a_bad_config() {
        let short = secret_file(b"0123456789");
        let err = Webhook::start(&config("http://127.0.0.1:9/hook", &short)).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
        let good = secret_file(&SECRET);
        let err = Webhook::start(&config("http://hooks.example.com/hook", &good)).unwrap_err();
        assert!(matches!(err, Error::Url(_)), "{err}");
        // The secret never shows up in errors or Debug.
        let hook = Webhook::start(&config("https://hooks.example.com/T0K3N", &good)).unwrap();
        let debug = format!("{hook:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
        assert!(
            !debug.contains("T0K3N"),
            "the url path may hold a token: {debug}"
        );
    }
}
