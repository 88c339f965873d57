use std::process::ExitCode;

use clap::Parser;

/// Per-thread free lists: the request path allocates and frees on the same worker thread.
#[global_allocator]
static ALLOC: switchyard::alloc::MiMalloc = switchyard::alloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc's `mi_option_e` (the same in its v2 and v3).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Arenas committed as they are used, not whole: idle RSS doubled otherwise (18 -> 37 MiB,
/// benches/README.md, "The allocator"). The option must be set before the first arena is made,
/// which happens before `main` (set at the top of `main` it changed nothing): so it runs as an
/// ELF constructor, which the C runtime calls before any Rust code.
extern "C" fn arena_commit_on_demand() {
    // SAFETY: sets a process-wide option; one thread, no allocation yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[link_section = ".init_array"]
static ARENA_COMMIT_ON_DEMAND: extern "C" fn() = arena_commit_on_demand;

fn main() -> ExitCode {
    let cli = switchyard::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| "switchyard=info".into());
    // Colour only for a person at a terminal: `docker logs` and files get plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(switchyard::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // Output piped into `head` and the like: not a failure (ripgrep does the same).
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            if let Some(switchyard::control::client::ControlError::Refused { problems, .. }) =
                e.downcast_ref()
            {
                for p in problems {
                    eprintln!("  {p}");
                }
            }
            ExitCode::FAILURE
        }
    }
}
