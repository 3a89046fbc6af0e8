//! What the harness needs beside its measurements: `copex serve` run as a
//! child process (so its memory is its own), mutual-TLS channels to it as
//! `partners/admin`, fresh PostgreSQL databases and the generated data set.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A running `copex serve`.
pub struct ServeProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl ServeProcess {
    /// Starts `copex serve` on 127.0.0.1:0 with `data_dir` and the extra
    /// `args`, and waits for the line that says where it serves.
    pub fn start(data_dir: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_copex"))
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--data-dir={}", data_dir.display()))
            .args(args)
            // sqlx warns of slow statements by printing them whole.
            .env("COPEX_LOG", "error")
            // The harness measures the hub, not the per-partner limits.
            .env("COPEX_RATE_LIMIT", "0")
            .env("COPEX_MAX_WATCHERS_PER_PARTNER", "100000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start copex serve")?;
        let stdout = child.stdout.take().context("stdout of copex serve")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads every line, so the pipe never fills while the hub runs.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.strip_prefix("copex is serving on https://") {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().context("the address copex serve printed")?,
            Err(_) => {
                let _ = child.kill();
                bail!("copex serve did not start within 60 s");
            }
        };
        Ok(Self { addr, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, in MiB, from /proc.
    pub fn memory_mib(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .context("a field of /proc/PID/status")?
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU time the hub has used so far, user and system, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
            + fields.get(12).context("stime")?.parse::<f64>()?;
        // Linux reports in clock ticks of 1/100 s on every common platform.
        Ok(ticks / 100.0)
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The development PKI `copex serve` made in its data directory.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// A channel to `addr` as `partners/admin`, with the files of `pki`.
pub async fn connect(addr: SocketAddr, pki: &Path) -> anyhow::Result<Channel> {
    connect_as(addr, pki, "admin").await
}

/// A channel to `addr` as `partners/{id}`, with `{id}.pem` and `{id}.key`
/// of `pki`.
pub async fn connect_as(addr: SocketAddr, pki: &Path, id: &str) -> anyhow::Result<Channel> {
    let read =
        |file: &str| std::fs::read(pki.join(file)).with_context(|| format!("{file} in the PKI"));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(
            read(&format!("{id}.pem"))?,
            read(&format!("{id}.key"))?,
        ))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
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
