//! The partner profile `copex.toml`: where the hub is and which CA,
//! certificate and key reach it. The CLI and the Python and TypeScript
//! clients read the same file (docs/partners.md).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file a client looks for in its working directory when neither
/// `--profile` nor `COPEX_PROFILE` names one.
pub const DEFAULT_FILE: &str = "copex.toml";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read the profile {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the profile {} is not valid: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write the profile {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A profile as read, with relative paths resolved against its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub hub: String,
    pub partner: Option<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    hub: String,
    partner: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    server_name: Option<String>,
}

impl Profile {
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// `path` only resolves relative file names and names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ProfileError> {
        let invalid = |reason: String| ProfileError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        if !raw.hub.starts_with("https://") {
            return Err(invalid(format!(
                "hub must be an https:// URL, not {:?}",
                raw.hub
            )));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        Ok(Self {
            hub: raw.hub,
            partner: raw.partner,
            ca: base.join(raw.ca),
            cert: base.join(raw.cert),
            key: base.join(raw.key),
            server_name: raw.server_name,
        })
    }
}

/// What `write` puts into a profile; paths are written as given (relative
/// ones are relative to the profile's directory).
#[derive(Debug, Clone)]
pub struct NewProfile<'a> {
    pub hub: &'a str,
    pub partner: &'a str,
    pub ca: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
}

impl NewProfile<'_> {
    pub fn to_toml(&self) -> String {
        format!(
            "# copex partner profile\n\
             hub = {}\n\
             partner = {}\n\
             ca = {}\n\
             cert = {}\n\
             key = {}\n\
             # server_name = \"hub.example.org\"   # the TLS name to verify when `hub` uses an IP address\n",
            quote(self.hub),
            quote(self.partner),
            quote(self.ca),
            quote(self.cert),
            quote(self.key),
        )
    }

    pub fn write(&self, path: &Path) -> Result<(), ProfileError> {
        std::fs::write(path, self.to_toml()).map_err(|source| ProfileError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

/// A TOML basic string.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_profile_reads_back_with_paths_beside_it() {
        let text = NewProfile {
            hub: "https://hub.example.org:50051",
            partner: "ecpat",
            ca: "ca.pem",
            cert: "dir \"x\"\\ecpat.pem",
            key: "ecpat.key",
        }
        .to_toml();
        let profile = Profile::parse(Path::new("/b/copex.toml"), &text).unwrap();
        assert_eq!(profile.hub, "https://hub.example.org:50051");
        assert_eq!(profile.partner.as_deref(), Some("ecpat"));
        assert_eq!(profile.ca, Path::new("/b/ca.pem"));
        assert_eq!(profile.cert, Path::new("/b/dir \"x\"\\ecpat.pem"));
        assert_eq!(profile.key, Path::new("/b/ecpat.key"));
        assert_eq!(profile.server_name, None);
    }

    #[test]
    fn unknown_keys_missing_keys_and_plain_http_are_errors() {
        let path = Path::new("p/copex.toml");
        let base = "hub = \"https://h:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        assert!(Profile::parse(path, base).is_ok());
        let typo = format!("{base}sever_name = \"x\"\n");
        let err = Profile::parse(path, &typo).unwrap_err().to_string();
        assert!(
            err.contains("sever_name") && err.contains("p/copex.toml"),
            "{err}"
        );
        let missing = "hub = \"https://h:1\"\nca = \"a\"\ncert = \"b\"\n";
        let err = Profile::parse(path, missing).unwrap_err().to_string();
        assert!(err.contains("key"), "{err}");
        let http = base.replace("https://", "http://");
        assert!(Profile::parse(path, &http).is_err());
    }
}
