//! The `tierwarden` command.
#![forbid(unsafe_code)]

fn main() {
    let code = tierwarden::cli::main();
    std::process::exit(code);
}
