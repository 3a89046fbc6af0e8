//! What the benchmarks share: a hub started in-process exactly as `copex
//! serve` starts, and mutual-TLS channels to it as `partners/admin`.

// Each bench compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;

use copex::auth::cert::partner_spiffe_id;
use copex::auth::pki::{CertificateAuthority, LeafOptions};
use copex::config::ServeArgs;
use copex::server::Server;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub struct Hub {
    pub addr: SocketAddr,
    pub ca: CertificateAuthority,
    /// The data directory, with the development PKI in `pki/`.
    pub dir: tempfile::TempDir,
}

/// Starts a hub on 127.0.0.1:0 in a new data directory; `database_url`
/// `None` is the embedded SQLite default.
pub async fn start_hub(database_url: Option<String>) -> anyhow::Result<Hub> {
    let dir = tempfile::tempdir()?;
    let config = ServeArgs {
        listen: Some("127.0.0.1:0".parse()?),
        data_dir: Some(dir.path().to_path_buf()),
        database_url,
        log: Some("warn".into()),
        ..Default::default()
    }
    .resolve()?;
    serve(config, dir).await
}

/// Starts a hub with `args` (listen and log are set here).
pub async fn start_hub_with(mut args: ServeArgs) -> anyhow::Result<Hub> {
    let dir = tempfile::tempdir()?;
    args.listen = Some("127.0.0.1:0".parse()?);
    args.data_dir = Some(dir.path().to_path_buf());
    args.log = Some("warn".into());
    serve(args.resolve()?, dir).await
}

async fn serve(config: copex::config::ServeConfig, dir: tempfile::TempDir) -> anyhow::Result<Hub> {
    let (server, _) = Server::build(&config).await?;
    let addr = server.local_addr()?;
    let pki = match &config.tls {
        Some(tls) => tls
            .client_ca
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default(),
        None => dir.path().join("pki"),
    };
    let ca = CertificateAuthority::load(&pki)?;
    tokio::spawn(server.run_until_stopped(std::future::pending()));
    Ok(Hub { addr, ca, dir })
}

/// A fresh database on the PostgreSQL server at `admin_url`, dropped with
/// the guard.
pub struct PgDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create(admin_url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let name = format!("copex_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b)
            .unwrap_or(admin_url);
        Ok(Self {
            url: format!("{base}/{name}"),
            admin_url: admin_url.to_owned(),
            name,
        })
    }

    pub async fn drop_database(self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// The value after `name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// A channel to `addr` as `partners/admin`, with a certificate from `ca`.
pub async fn connect(addr: SocketAddr, ca: &CertificateAuthority) -> anyhow::Result<Channel> {
    let (cert, key) = ca.sign_leaf(&LeafOptions {
        uri_sans: vec![partner_spiffe_id("copex.local", "admin")],
        client_auth: true,
        ..Default::default()
    })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

/// A deterministic generator of realistic records: English-like text whose
/// words follow Zipf's law over a vocabulary of function words, domain words
/// and made-up words, so full-text search sees a real spread of common and
/// rare terms. Records are 1-3 KiB, like real tool and practice entries.
pub mod dataset {
    use copex::pb::{self, record::Kind as R};

    const FUNCTION_WORDS: &str = "the of and to in for a is on with that by as are from \
        this be or at it an which was their not have has more can its were all also these \
        other they been but who into may such than one when most new how";
    const DOMAIN_WORDS: &str = "child protection online safety exploitation abuse grooming \
        hotline report reporting hash matching classifier victim identification law \
        enforcement police industry platform content image video detection removal \
        awareness education parents teachers school youth survivors support helpline \
        referral investigation forensic triage evidence database international national \
        regional cooperation partnership policy legislation regulation guideline \
        framework standard practice workshop training capacity research data privacy \
        encryption messaging social media gaming livestream sextortion trafficking \
        prevention response recovery community network mobile operator provider \
        developer tool open source licence deployment expansion language translation \
        age assurance verification moderation review queue analyst risk assessment";
    const VOCABULARY_SIZE: usize = 4000;

    pub struct Vocabulary {
        pub words: Vec<String>,
        /// Cumulative Zipf weights, for sampling by rank.
        cumulative: Vec<f64>,
    }

    impl Vocabulary {
        pub fn new() -> Self {
            let mut words: Vec<String> = FUNCTION_WORDS
                .split_whitespace()
                .chain(DOMAIN_WORDS.split_whitespace())
                .map(str::to_owned)
                .collect();
            let syllables = [
                "ka", "lo", "mi", "ne", "ra", "su", "ti", "vo", "de", "ban", "cor", "fel", "gis",
                "hal", "jun", "mor", "pel", "qua", "sen", "tor",
            ];
            let mut n = 0usize;
            while words.len() < VOCABULARY_SIZE {
                let (a, b, c) = (n % 20, (n / 20) % 20, (n / 400) % 20);
                words.push(format!("{}{}{}", syllables[a], syllables[b], syllables[c]));
                n += 1;
            }
            let mut total = 0.0;
            let cumulative = (0..words.len())
                .map(|rank| {
                    total += 1.0 / (rank + 1) as f64;
                    total
                })
                .collect();
            Vocabulary { words, cumulative }
        }

        /// The rank of a word drawn from Zipf's law.
        pub fn sample_rank(&self, rng: &mut Rng) -> usize {
            let total = self.cumulative.last().copied().unwrap_or(1.0);
            let x = rng.unit() * total;
            self.cumulative.partition_point(|&c| c < x)
        }

        /// `n` words in sentences.
        pub fn text(&self, rng: &mut Rng, n: usize) -> String {
            let mut out = String::with_capacity(n * 8);
            for i in 0..n {
                let word = &self.words[self.sample_rank(rng).min(self.words.len() - 1)];
                if i % 12 == 0 {
                    if i > 0 {
                        out.push_str(". ");
                    }
                    let mut chars = word.chars();
                    if let Some(first) = chars.next() {
                        out.extend(first.to_uppercase());
                        out.push_str(chars.as_str());
                    }
                } else {
                    out.push(' ');
                    out.push_str(word);
                }
            }
            out.push('.');
            out
        }

        /// A two-word search query as a user types it: content words drawn
        /// by frequency, function words left out.
        pub fn query(&self, rng: &mut Rng) -> String {
            let skip = FUNCTION_WORDS.split_whitespace().count();
            let mut pick = || loop {
                let rank = self.sample_rank(rng);
                if rank >= skip && rank < self.words.len() {
                    return self.words[rank].clone();
                }
            };
            format!("{} {}", pick(), pick())
        }
    }

    impl Default for Vocabulary {
        fn default() -> Self {
            Self::new()
        }
    }

    /// xorshift64*: enough randomness for a data set, no dependency.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Record `i` of the data set, owned by `partners/{owner}`: tools at
    /// even positions, practices at odd ones, GREEN.
    pub fn record(vocabulary: &Vocabulary, owner: &str, i: usize) -> pb::Record {
        let mut rng = Rng::new(i as u64 + 1);
        let sharing = Some(pb::Sharing {
            tlp: pb::Tlp::Green as i32,
            recipients: vec![],
        });
        let mut text = |n: usize| vocabulary.text(&mut rng, n);
        if i.is_multiple_of(2) {
            pb::Record {
                kind: Some(R::Tool(pb::Tool {
                    name: format!("partners/{owner}/tools/t{i}"),
                    display_name: text(3).trim_end_matches('.').to_owned(),
                    summary: text(20),
                    description: text(100 + i % 150),
                    developer: "Example Industry Partner".into(),
                    category: 1 + (i % 8) as i32,
                    capabilities: vec![text(2), text(2)],
                    regions: vec!["KE".into(), "TH".into()],
                    languages: vec!["en".into()],
                    expansion_notes: text(30),
                    sharing,
                    ..Default::default()
                })),
            }
        } else {
            pb::Record {
                kind: Some(R::Practice(pb::Practice {
                    name: format!("partners/{owner}/practices/p{i}"),
                    title: text(4).trim_end_matches('.').to_owned(),
                    summary: text(20),
                    body: text(100 + i % 150),
                    regions: vec!["GB".into()],
                    topics: vec![text(1), text(2)],
                    outcomes: text(30),
                    sharing,
                    ..Default::default()
                })),
            }
        }
    }
}
