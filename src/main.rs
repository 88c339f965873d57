use std::process::ExitCode;

use clap::Parser;

/// Per-thread free lists: the request path allocates and frees on the same worker thread.
#[global_allocator]
static ALLOC: MiMalloc = MiMalloc;

/// mimalloc, called as its C API intends: `mi_malloc` for the alignments every block has, the
/// aligned entry points only for larger ones. (The `mimalloc` crate sends everything through
/// `mi_malloc_aligned`, whose path for blocks over 1 KiB over-allocates: 400 instructions for
/// an HTTP/2 request's 3 KiB future instead of ~100; benches/README.md, "The allocator".)
struct MiMalloc;

/// What every mimalloc block of at least this size is aligned to (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN: usize = 16;

/// Plain `mi_malloc` serves this layout (as std's System allocator decides for malloc).
fn plain(l: std::alloc::Layout) -> bool {
    l.align() <= MI_MAX_ALIGN && l.align() <= l.size()
}

// SAFETY: each call forwards to the mimalloc function for the same job, with the layout's size
// (and alignment where it exceeds what `mi_malloc` guarantees); `mi_free` takes any block.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if plain(l) {
            mi::mi_malloc(l.size()).cast()
        } else {
            mi::mi_malloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if plain(l) {
            mi::mi_zalloc(l.size()).cast()
        } else {
            mi::mi_zalloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _: std::alloc::Layout) {
        libmimalloc_sys::mi_free(p.cast());
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        if l.align() <= MI_MAX_ALIGN && l.align() <= size {
            mi::mi_realloc(p.cast(), size).cast()
        } else {
            mi::mi_realloc_aligned(p.cast(), size, l.align()).cast()
        }
    }
}

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
