//! The onboarding kit as a partner and an operator use it: the partner
//! makes its key and request, the operator signs it into a bundle, the
//! partner connects with the bundle's profile. Bad requests are refused and
//! a wrong CA on either side is named plainly.

use std::path::Path;
use std::process::{Command, Output};

use crate::process::{BIN, serve};

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("COPEX_HUB")
        .env_remove("COPEX_CA")
        .env_remove("COPEX_CERT")
        .env_remove("COPEX_KEY")
        .env_remove("COPEX_PROFILE")
        .output()
        .expect("run copex")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command should have failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).expect("utf-8")
}

#[test]
fn request_sign_and_connect_with_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let served = serve(&dir.join("copex-data"));
    let pki = dir.join("copex-data/pki");

    // The bootstrap admin's profile names the port this hub really uses.
    let admin = ok(run(
        dir,
        &["--profile", "copex-data/pki/admin.toml", "whoami"],
    ));
    assert!(admin.contains("partners/admin"), "{admin}");
    ok(run(
        dir,
        &[
            "--profile",
            "copex-data/pki/admin.toml",
            "partners",
            "create",
            "ecpat",
            "--display-name",
            "ECPAT",
        ],
    ));

    // The partner's side: a key that stays here and a request.
    let partner_dir = dir.join("ecpat");
    ok(run(
        dir,
        &["pki", "request", "--partner", "ecpat", "--dir", "ecpat"],
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(partner_dir.join("ecpat.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second request would orphan the first key: refused.
    let again = failed(run(
        dir,
        &["pki", "request", "--partner", "ecpat", "--dir", "ecpat"],
    ));
    assert!(again.contains("already exists"), "{again}");

    // The operator's side: the default bundle directory is ./ecpat-bundle.
    let signed = ok(run(
        dir,
        &[
            "pki",
            "sign",
            "--csr",
            "ecpat/ecpat.csr",
            "--partner",
            "ecpat",
            "--hub",
            &served.hub,
            "--dir",
            "copex-data/pki",
        ],
    ));
    let bundle = dir.join("ecpat-bundle");
    for file in ["ca.pem", "ecpat.pem", "copex.toml", "README.txt"] {
        assert!(bundle.join(file).is_file(), "{file}: {signed}");
    }
    assert!(!bundle.join("ecpat.key").exists());
    assert_eq!(
        std::fs::read(bundle.join("ca.pem")).unwrap(),
        std::fs::read(pki.join("ca.pem")).unwrap()
    );
    let profile = std::fs::read_to_string(bundle.join("copex.toml")).unwrap();
    assert!(
        profile.contains(&format!("hub = \"{}\"", served.hub)),
        "{profile}"
    );
    let readme = std::fs::read_to_string(bundle.join("README.txt")).unwrap();
    assert!(readme.contains("ecpat.key") && readme.contains("copex --profile copex.toml whoami"));

    // The key joins the bundle on the partner's side; then the profile is
    // all the client needs, from a flag, the variable, or ./copex.toml.
    std::fs::copy(partner_dir.join("ecpat.key"), bundle.join("ecpat.key")).unwrap();
    let me = ok(run(
        dir,
        &["--profile", "ecpat-bundle/copex.toml", "whoami"],
    ));
    assert!(me.contains("partners/ecpat"), "{me}");
    let me = ok(Command::new(BIN)
        .arg("whoami")
        .current_dir(dir)
        .env("COPEX_PROFILE", bundle.join("copex.toml"))
        .output()
        .unwrap());
    assert!(me.contains("partners/ecpat"), "{me}");
    let me = ok(run(&bundle, &["whoami"]));
    assert!(me.contains("partners/ecpat"), "{me}");
    // Flags win over the profile, setting by setting.
    let me = ok(run(
        &bundle,
        &[
            "--cert",
            pki.join("admin.pem").to_str().unwrap(),
            "--key",
            pki.join("admin.key").to_str().unwrap(),
            "whoami",
        ],
    ));
    assert!(me.contains("partners/admin"), "{me}");

    // A profile with a typo is refused, naming the key.
    std::fs::write(
        dir.join("typo.toml"),
        profile.replace("partner = ", "partnr = "),
    )
    .unwrap();
    let err = failed(run(dir, &["--profile", "typo.toml", "whoami"]));
    assert!(err.contains("partnr"), "{err}");
}

#[test]
fn sign_refuses_a_request_for_another_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(run(dir, &["pki", "init", "--dir", "pki"]));
    ok(run(
        dir,
        &["pki", "request", "--partner", "ecpat", "--dir", "req"],
    ));
    ok(run(
        dir,
        &["pki", "request", "--partner", "admin", "--dir", "req"],
    ));
    ok(run(
        dir,
        &[
            "pki",
            "request",
            "--partner",
            "ecpat",
            "--dir",
            "other-td",
            "--trust-domain",
            "evil.example",
        ],
    ));

    // Run away from the hub's data directory, sign says where to look.
    let lost = failed(run(
        dir,
        &[
            "pki",
            "sign",
            "--csr",
            "req/ecpat.csr",
            "--partner",
            "ecpat",
            "--hub",
            "https://hub.example:50051",
        ],
    ));
    assert!(
        lost.contains("no CA in copex-data/pki") && lost.contains("--dir DATA/pki"),
        "{lost}"
    );
    assert!(!dir.join("ecpat-bundle").exists());

    let sign = |csr: &str, partner: &str| {
        run(
            dir,
            &[
                "pki",
                "sign",
                "--csr",
                csr,
                "--partner",
                partner,
                "--hub",
                "https://hub.example:50051",
                "--dir",
                "pki",
                "--out",
                "bundle",
            ],
        )
    };
    // Another partner's identity, the admin's, another trust domain.
    for (csr, partner, asks) in [
        (
            "req/ecpat.csr",
            "gsma",
            "spiffe://copex.local/partner/ecpat",
        ),
        (
            "req/admin.csr",
            "ecpat",
            "spiffe://copex.local/partner/admin",
        ),
        (
            "other-td/ecpat.csr",
            "ecpat",
            "spiffe://evil.example/partner/ecpat",
        ),
    ] {
        let err = failed(sign(csr, partner));
        assert!(err.contains("refusing to sign"), "{err}");
        assert!(err.contains(asks), "{err}");
        assert!(!dir.join("bundle").exists(), "{csr} as {partner}");
    }

    // Extra SANs and no SAN at all, made with openssl as a partner might.
    let openssl = |name: &str, extra: &[&str]| {
        let status = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args([
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])
            .args(["-subj", "/CN=ecpat"])
            .args(extra)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    };
    openssl(
        "extra",
        &[
            "-addext",
            "subjectAltName=URI:spiffe://copex.local/partner/ecpat,DNS:hub.example",
        ],
    );
    let err = failed(sign("extra.csr", "ecpat"));
    assert!(err.contains("DNS:hub.example"), "{err}");
    openssl("bare", &[]);
    let err = failed(sign("bare.csr", "ecpat"));
    assert!(err.contains("no identity"), "{err}");
    assert!(!dir.join("bundle").exists());

    // openssl's own request for the right identity is signed (the guide's
    // alternative to `copex pki request`).
    openssl(
        "good",
        &[
            "-addext",
            "subjectAltName=URI:spiffe://copex.local/partner/ecpat",
        ],
    );
    ok(sign("good.csr", "ecpat"));
    assert!(dir.join("bundle/ecpat.pem").is_file());

    // A request altered after signing: the signature no longer verifies.
    let pem = std::fs::read_to_string(dir.join("req/ecpat.csr")).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let at = der
        .windows(b"ecpat".len())
        .position(|w| w == b"ecpat")
        .expect("the CN in the request");
    der[at] = b'x';
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    std::fs::write(dir.join("tampered.csr"), tampered).unwrap();
    std::fs::remove_dir_all(dir.join("bundle")).unwrap();
    let err = failed(sign("tampered.csr", "ecpat"));
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!dir.join("bundle").exists());
}

#[test]
fn development_cas_have_unique_subjects() {
    let tmp = tempfile::tempdir().unwrap();
    let subject = |name: &str| {
        ok(run(tmp.path(), &["pki", "init", "--dir", name]));
        let pem = std::fs::read(tmp.path().join(name).join("ca.pem")).unwrap();
        let der: rustls::pki_types::CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.subject().to_string()
    };
    let (a, b) = (subject("a"), subject("b"));
    assert!(
        a.starts_with("CN=copex development CA (copex.local) "),
        "{a}"
    );
    assert_ne!(a, b);
}

#[test]
fn a_wrong_ca_on_either_side_is_named_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let served = serve(&dir.join("copex-data"));
    let pki = dir.join("copex-data/pki");
    ok(run(dir, &["pki", "init", "--dir", "other"]));
    ok(run(
        dir,
        &["pki", "issue", "--dir", "other", "--partner", "admin"],
    ));
    let with = |ca: &Path, cert: &Path, key: &Path| {
        run(
            dir,
            &[
                "--hub",
                &served.hub,
                "--ca",
                ca.to_str().unwrap(),
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "whoami",
            ],
        )
    };
    let other = dir.join("other");

    // This client does not trust the hub's certificate.
    let err = failed(with(
        &other.join("ca.pem"),
        &pki.join("admin.pem"),
        &pki.join("admin.key"),
    ));
    assert!(err.contains("certificate is not trusted by"), "{err}");
    assert!(
        err.contains("signed by a CA other than the one in --ca"),
        "{err}"
    );
    assert!(!err.contains("transport error"), "{err}");

    // The hub does not trust this client's certificate.
    let err = failed(with(
        &pki.join("ca.pem"),
        &other.join("admin.pem"),
        &other.join("admin.key"),
    ));
    assert!(err.contains("refused this client's certificate"), "{err}");
    assert!(err.contains("unknown CA"), "{err}");
    assert!(err.contains("onboarding bundle"), "{err}");
    assert!(!err.contains("transport error"), "{err}");
}

#[test]
fn a_mismatched_key_a_missing_key_and_a_hub_that_is_down_are_named_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let served = serve(&dir.join("copex-data"));
    let pki = dir.join("copex-data/pki");
    ok(run(dir, &["pki", "init", "--dir", "other"]));
    ok(run(
        dir,
        &["pki", "issue", "--dir", "other", "--partner", "admin"],
    ));
    let whoami = |hub: &str, key: &Path| {
        run(
            dir,
            &[
                "--hub",
                hub,
                "--ca",
                pki.join("ca.pem").to_str().unwrap(),
                "--cert",
                pki.join("admin.pem").to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "whoami",
            ],
        )
    };

    // The admin's certificate with another CA's admin key.
    let err = failed(whoami(&served.hub, &dir.join("other/admin.key")));
    assert!(
        err.contains("does not belong to the client certificate"),
        "{err}"
    );
    assert!(err.contains("other/admin.key"), "{err}");
    assert!(!err.contains("transport error"), "{err}");

    // A bundle's profile whose key was not copied in: the profile is named,
    // and the advice is to copy the key, not to start a development hub.
    let bundle = dir.join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    std::fs::copy(pki.join("ca.pem"), bundle.join("ca.pem")).unwrap();
    std::fs::copy(pki.join("admin.pem"), bundle.join("admin.pem")).unwrap();
    std::fs::write(
        bundle.join("copex.toml"),
        format!(
            "hub = \"{}\"\nca = \"ca.pem\"\ncert = \"admin.pem\"\nkey = \"admin.key\"\n",
            served.hub
        ),
    )
    .unwrap();
    let err = failed(run(dir, &["--profile", "bundle/copex.toml", "whoami"]));
    assert!(err.contains("bundle/copex.toml"), "{err}");
    assert!(err.contains("copex pki request"), "{err}");
    assert!(!err.contains("copex serve"), "{err}");

    // Nothing listens where --hub points.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = failed(whoami(
        &format!("https://localhost:{port}"),
        &pki.join("admin.key"),
    ));
    assert!(
        err.contains(&format!("cannot reach the hub at https://localhost:{port}")),
        "{err}"
    );
    assert!(err.contains("nothing accepts connections"), "{err}");
    assert!(!err.contains("tcp connect error"), "{err}");
}
