use super::*;
use crate::auth::cert::inspect;
use crate::pki::{self, CertificateAuthority, LeafOptions, PkiFiles};
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn server_files(dir: &Path) -> ServerTlsFiles {
    let files = PkiFiles::in_dir(dir);
    ServerTlsFiles {
        cert: files.server_cert,
        key: files.server_key,
        client_ca: files.ca_cert,
        hub_ca: None,
        crls: vec![files.crl],
    }
}

fn partner_client(dir: &Path, partner: &str) -> Arc<ClientConfig> {
    let (cert, key) = pki::issue(dir, partner, 30).unwrap();
    client_config(
        &std::fs::read(PkiFiles::in_dir(dir).ca_cert).unwrap(),
        &std::fs::read(cert).unwrap(),
        &std::fs::read(key).unwrap(),
    )
    .unwrap()
}

fn client_with_leaf(
    dir: &Path,
    ca: &CertificateAuthority,
    leaf: &LeafOptions,
) -> Arc<ClientConfig> {
    let (cert, key) = ca.sign_leaf(leaf).unwrap();
    client_config(
        &std::fs::read(PkiFiles::in_dir(dir).ca_cert).unwrap(),
        cert.as_bytes(),
        key.as_bytes(),
    )
    .unwrap()
}

fn init_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    pki::init(tmp.path(), crate::config::DEFAULT_TRUST_DOMAIN, &[]).unwrap();
    tmp
}

/// Runs one connection. Returns the server's view (the client's leaf
/// certificate) and the client's (what it read before the server closed).
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (Result<Vec<u8>, String>, Result<Vec<u8>, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let connection = tls.get_ref().1;
        assert_eq!(connection.alpn_protocol(), Some(ALPN_H2));
        let leaf = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| der.to_vec())
            .ok_or("no peer certificate")?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(leaf)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let mut received = Vec::new();
        tls.read_to_end(&mut received).await?;
        Ok::<_, std::io::Error>(received)
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .unwrap()
        .map_err(|e| e.to_string());
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    (server_result, client_result)
}

async fn assert_accepted(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Vec<u8> {
    let (server_result, client_result) = handshake(server, client).await;
    assert_eq!(client_result.as_deref(), Ok(&b"ok"[..]));
    server_result.unwrap()
}

async fn assert_rejected(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> String {
    let (server_result, client_result) = handshake(server, client).await;
    assert_ne!(client_result.as_deref(), Ok(&b"ok"[..]));
    server_result.unwrap_err()
}

#[tokio::test]
async fn partner_certificate_is_accepted() {
    let tmp = init_dir();
    let server = server_config(&server_files(tmp.path())).unwrap();
    let leaf = assert_accepted(server, partner_client(tmp.path(), "a")).await;
    let identity = inspect(&leaf).unwrap();
    assert_eq!(identity.uri_sans, ["spiffe://copex.local/partner/a"]);
}

#[tokio::test]
async fn tls12_with_client_certificate_works() {
    let tmp = init_dir();
    let dir = tmp.path();
    let server = server_config(&server_files(dir)).unwrap();
    let (cert, key) = pki::issue(dir, "a", 30).unwrap();
    let mut roots = RootCertStore::empty();
    for der in read_certs(&PkiFiles::in_dir(dir).ca_cert, "CA").unwrap() {
        roots.add(der).unwrap();
    }
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(read_certs(&cert, "cert").unwrap(), read_key(&key).unwrap())
        .unwrap();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    assert_accepted(server, Arc::new(client)).await;
}

#[tokio::test]
async fn certificate_from_other_ca_is_rejected() {
    let tmp = init_dir();
    let server = server_config(&server_files(tmp.path())).unwrap();
    let other =
        CertificateAuthority::generate("other", crate::config::DEFAULT_TRUST_DOMAIN).unwrap();
    let client = client_with_leaf(
        tmp.path(),
        &other,
        &LeafOptions {
            common_name: "a".into(),
            uri_sans: vec!["spiffe://copex.local/partner/a".into()],
            client_auth: true,
            ..Default::default()
        },
    );
    assert_rejected(server, client).await;
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let tmp = init_dir();
    let server = server_config(&server_files(tmp.path())).unwrap();
    let mut roots = RootCertStore::empty();
    for der in read_certs(&PkiFiles::in_dir(tmp.path()).ca_cert, "CA").unwrap() {
        roots.add(der).unwrap();
    }
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    assert_rejected(server, Arc::new(client)).await;
}

#[tokio::test]
async fn revoked_certificate_is_rejected() {
    let tmp = init_dir();
    let dir = tmp.path();
    let client_a = partner_client(dir, "a");
    let client_b = partner_client(dir, "b");
    let server = server_config(&server_files(dir)).unwrap();
    assert_accepted(server.clone(), client_a.clone()).await;

    pki::revoke(dir, &dir.join("a.pem")).unwrap();
    // The running config still holds the old CRL; a rebuilt one refuses.
    assert_accepted(server, client_a.clone()).await;
    let server = server_config(&server_files(dir)).unwrap();
    let error = assert_rejected(server.clone(), client_a).await;
    assert!(error.to_lowercase().contains("revoked"), "{error}");
    assert_accepted(server, client_b).await;
}

#[tokio::test]
async fn expired_certificate_is_rejected() {
    let tmp = init_dir();
    let dir = tmp.path();
    let server = server_config(&server_files(dir)).unwrap();
    let ca = CertificateAuthority::load(dir).unwrap();
    let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let client = client_with_leaf(
        dir,
        &ca,
        &LeafOptions {
            common_name: "a".into(),
            uri_sans: vec!["spiffe://copex.local/partner/a".into()],
            client_auth: true,
            not_before: Some(past),
            not_after: Some(past + time::Duration::days(1)),
            ..Default::default()
        },
    );
    let error = assert_rejected(server, client).await;
    assert!(error.to_lowercase().contains("expired"), "{error}");
}

#[test]
fn errors_name_the_file() {
    let tmp = init_dir();
    let dir = tmp.path();

    let mut files = server_files(dir);
    files.key = dir.join("missing.key");
    let error = server_config(&files).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("cannot read TLS key {}: ", files.key.display())),
        "{error}"
    );

    let mut files = server_files(dir);
    files.client_ca = dir.join("server.key");
    let error = server_config(&files).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "cannot parse TLS client CA bundle {}: ",
            files.client_ca.display()
        )),
        "{error}"
    );

    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let mut files = server_files(dir);
    files.crls.push(garbage.clone());
    let error = server_config(&files).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("cannot parse TLS CRL {}: ", garbage.display())),
        "{error}"
    );

    let mut files = server_files(dir);
    files.key = PkiFiles::in_dir(dir).ca_key;
    assert!(matches!(
        server_config(&files),
        Err(TlsError::CertifiedKey { .. })
    ));

    assert!(matches!(
        client_config(b"", b"", b""),
        Err(TlsError::Pem {
            what: "CA certificate",
            ..
        })
    ));
}
