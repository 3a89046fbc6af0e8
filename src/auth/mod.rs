//! Who is calling: TLS configuration, certificate identity and roles.

pub mod cert;
pub mod identity;
pub mod rate;
pub mod tls;

pub use identity::{Authenticator, Caller};
