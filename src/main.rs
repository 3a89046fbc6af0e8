//! The `copex` binary: the hub and its command-line client.

fn main() -> std::process::ExitCode {
    copex::cli::main()
}
