//! `shop`: one binary for every process of the shop. `shop role <name>` runs one service (what a
//! container runs); `shop` alone supervises them all. `cargo run --example shop` is the same program.

fn main() -> std::process::ExitCode {
    shop::main()
}
