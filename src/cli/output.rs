//! How failed calls and long work read on the command line.

use super::client;

/// Turns a failed call into an error message that shows the status and the
/// google.rpc details a person needs.
pub fn describe_status(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    // A handshake that failed after connecting (TLS 1.3 sends the hub's
    // verdict on our certificate after the client's side has finished)
    // reaches us as a failed call.
    if let Some(settings) = SETTINGS.get()
        && let Some(plain) = client::explain_tls(status, settings)
    {
        return plain;
    }
    let details = status.get_error_details();
    let mut text = format!("{:?}", status.code());
    match details.bad_request() {
        // The violations say it all; the message repeats them.
        Some(bad) if !bad.field_violations.is_empty() => {
            for v in &bad.field_violations {
                text.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
        }
        _ => text.push_str(&format!(": {}", status.message())),
    }
    if let Some(info) = details.error_info() {
        text.push_str(&format!("\n  reason: {}", info.reason));
    }
    if status.code() == tonic::Code::Unauthenticated {
        text.push_str(
            "\n  the hub accepted the certificate but does not know whom it speaks for: ask the hub's operator to register the partner (`copex partners create ID --identity spiffe://...`) or to activate it",
        );
    }
    text
}

/// The settings this process connected with, for `describe_status`.
pub(super) static SETTINGS: std::sync::OnceLock<client::Resolved> = std::sync::OnceLock::new();

pub(super) fn call_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(describe_status(&status))
}

/// A progress bar of `total` steps drawn on stderr with `template`
/// (indicatif's), hidden when stderr is not a terminal so that scripts'
/// logs stay clean.
pub(super) fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
