//! Reading and writing the PKI's files.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;

use super::PkiError;

pub(super) fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

pub(super) fn read_first_cert(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bytes = fs::read(path).map_err(io_error(path))?;
    first_cert(path, &bytes)
}

pub(super) fn first_cert(path: &Path, pem: &[u8]) -> Result<Vec<u8>, PkiError> {
    CertificateDer::from_pem_slice(pem)
        .map(|der| der.to_vec())
        .map_err(|e| PkiError::Parse {
            path: path.to_owned(),
            reason: format!("no PEM certificate: {e}"),
        })
}

pub(super) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_error(path))
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename, so a
/// crash never leaves half a key or half a CRL behind. `private` files get
/// mode 0600 from the moment they exist, the others (certificates, CRLs)
/// 0644, whatever the umask.
pub(super) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover from an interrupted run would make create_new fail.
    let _ = fs::remove_file(&tmp);

    let mode = if private {
        crate::data_dir::FILE_MODE
    } else {
        crate::data_dir::PUBLIC_MODE
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;

    let result = options
        .open(&tmp)
        .and_then(|mut file| {
            // open()'s mode passes through the umask (`copex serve` sets
            // 0077, which made certificates 0600); fchmod does not.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(fs::Permissions::from_mode(mode))?;
            }
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PkiError::Io {
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}
