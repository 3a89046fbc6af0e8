//! `copex pki`: the development CA's files, for the operator and partners.

use std::path::PathBuf;

use anyhow::bail;

use super::PkiCommand;
use crate::pki;

pub(super) fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            trust_domain,
            server_names,
        } => {
            let files = pki::init(&dir, &trust_domain, &server_names)?;
            out!("created {}", files.ca_cert.display());
            out!("created {}", files.ca_key.display());
            out!("created {}", files.server_cert.display());
            out!("created {}", files.server_key.display());
            out!("created {}", files.crl.display());
        }
        PkiCommand::Issue {
            dir,
            partner,
            days,
            profile_hub,
        } => {
            let (cert, key) = pki::issue(&dir, &partner, days)?;
            let profile = pki::write_profile(&dir, &partner, &profile_hub)?;
            out!("created {}", cert.display());
            out!("created {}", key.display());
            out!(
                "created {} (for the hub at {profile_hub}; --profile-hub names another)",
                profile.display()
            );
        }
        PkiCommand::Request {
            partner,
            dir,
            trust_domain,
        } => {
            let (key, csr) = pki::request(&dir, &partner, &trust_domain)?;
            out!(
                "created {} (your private key: keep it, never send it)",
                key.display()
            );
            out!("created {}", csr.display());
            out!(
                "send {} to the hub's operator; you will get back a bundle directory",
                csr.display()
            );
        }
        PkiCommand::Sign {
            csr,
            partner,
            hub,
            dir,
            out,
            days,
        } => {
            if !hub.starts_with("https://") {
                bail!("--hub must be the hub's https:// URL as partners reach it, not {hub:?}");
            }
            if !dir.join("ca.pem").is_file() {
                bail!(
                    "no CA in {}: run this where the hub's data directory is, or pass --dir DATA/pki",
                    dir.display()
                );
            }
            let cert = pki::sign_request(&dir, &csr, &partner, days)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("{partner}-bundle")));
            let bundle = pki::write_bundle(&dir, &out, &partner, &cert, &hub)?;
            for file in [&bundle.ca, &bundle.cert, &bundle.profile, &bundle.readme] {
                out!("created {}", file.display());
            }
            out!(
                "hand {} to partner {partner}; register it if not done yet: copex partners create {partner} --display-name ...",
                bundle.dir.display()
            );
        }
        PkiCommand::Revoke { dir, cert } => {
            pki::revoke(&dir, &cert)?;
            out!(
                "revoked {} in {}",
                cert.display(),
                dir.join("crl.pem").display()
            );
        }
    }
    Ok(())
}
