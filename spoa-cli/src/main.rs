//! The `spoa` command line tool. Work in progress.

fn main() {
    println!("spoa {}", env!("CARGO_PKG_VERSION"));
}
