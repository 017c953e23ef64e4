//! The `gatehouse` binary: the command line of [`gatehouse::cli`] with the built-in plugins.

use std::process::ExitCode;

/// mimalloc: the proxy allocates and frees many small buffers per request; measured faster
/// than the system allocator in `benches/README.md`. Built without its transparent-huge-page
/// advice (feature `no_thp`): a proxy's heap is small, and huge pages only inflated its RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    gatehouse::cli::main(gatehouse_plugins::builtins())
}
