//! The sync commands as a partner runs them: push, export, mirror.
