//! TLS through rustls, and mTLS: with a client CA configured, only clients holding a certificate it signed
//! get in.

use std::path::Path;

use broker::config::TlsConfig;
use broker_e2e::{both, DbBackend, Harness, Options};
use broker_sdk::{Certificate, Client, ClientTlsConfig, Identity, SessionRequest};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// (certificate PEM, key PEM) for `name`, signed by this CA.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

async fn client(
    h: &Harness,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Client, broker_sdk::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = broker_sdk::endpoint(format!("https://{}", h.running.addr))?
        .tls_config(tls)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| broker_sdk::Error::Transport(e.to_string()))?;
    let token = h.token("agent-1", &[broker::auth::Role::Agent], None);
    Ok(Client::from_channel(channel, token))
}

async fn open(c: Result<Client, broker_sdk::Error>) -> Result<(), String> {
    let c = c.map_err(|e| e.to_string())?;
    c.open_session(SessionRequest::new(["web.search"]))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn mtls_requires_a_certificate_from_the_client_ca(backend: DbBackend) {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("broker test server CA");
    let clients = Pki::new("broker test client CA");
    let rogue = Pki::new("someone else's CA");
    let (cert, key) = servers.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let tls = TlsConfig {
        cert: write(dir.path(), "server.crt", &cert),
        key: write(dir.path(), "server.key", &key),
        client_ca: Some(write(dir.path(), "clients.crt", &clients.ca_pem)),
    };
    let h = Harness::start_with(
        backend,
        Options {
            tls: Some(tls),
            ..Options::default()
        },
    )
    .await;

    let good = clients.issue("agent-host-1", ExtendedKeyUsagePurpose::ClientAuth);
    open(client(&h, &servers.ca_pem, Some(&good)).await)
        .await
        .expect("a client certificate from the client CA is accepted");

    let no_cert = open(client(&h, &servers.ca_pem, None).await).await;
    assert!(no_cert.is_err(), "no client certificate must be refused");
    let forged = rogue.issue("agent-host-1", ExtendedKeyUsagePurpose::ClientAuth);
    assert!(
        open(client(&h, &servers.ca_pem, Some(&forged)).await)
            .await
            .is_err(),
        "a certificate from another CA must be refused"
    );
    // Plaintext gRPC to a TLS port gets nowhere.
    let plain = Client::connect(
        format!("http://{}", h.running.addr),
        h.token("agent-1", &[broker::auth::Role::Agent], None),
    )
    .await;
    assert!(open(plain).await.is_err());
}
both!(mtls_requires_a_certificate_from_the_client_ca);

async fn tls_without_client_ca_serves_any_client(backend: DbBackend) {
    let dir = tempfile::tempdir().unwrap();
    let servers = Pki::new("broker test server CA");
    let (cert, key) = servers.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let tls = TlsConfig {
        cert: write(dir.path(), "server.crt", &cert),
        key: write(dir.path(), "server.key", &key),
        client_ca: None,
    };
    let h = Harness::start_with(
        backend,
        Options {
            tls: Some(tls),
            ..Options::default()
        },
    )
    .await;
    open(client(&h, &servers.ca_pem, None).await)
        .await
        .expect("server-only TLS");
    // A client that does not trust the server's CA refuses to talk.
    let other = Pki::new("not the server's CA");
    assert!(open(client(&h, &other.ca_pem, None).await).await.is_err());
}
both!(tls_without_client_ca_serves_any_client);
