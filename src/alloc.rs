//! The binary's allocator (the examples use it too, so their numbers compare with the binary's).

use libmimalloc_sys as mi;

/// mimalloc, called as its C API intends: `mi_malloc` for the alignments every block has, the
/// aligned entry points only for larger ones. (The `mimalloc` crate sends everything through
/// `mi_malloc_aligned`, whose path for blocks over 1 KiB over-allocates: 400 instructions for
/// an HTTP/2 request's 3 KiB future instead of ~100; benches/README.md, "The allocator".)
pub struct MiMalloc;

/// What every mimalloc block of at least this size is aligned to (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN: usize = 16;

/// Plain `mi_malloc` serves this layout (as std's System allocator decides for malloc).
#[inline]
fn plain(l: std::alloc::Layout) -> bool {
    l.align() <= MI_MAX_ALIGN && l.align() <= l.size()
}

// SAFETY: each call forwards to the mimalloc function for the same job, with the layout's size
// (and alignment where it exceeds what `mi_malloc` guarantees); `mi_free` takes any block.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        if plain(l) {
            mi::mi_malloc(l.size()).cast()
        } else {
            mi::mi_malloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        if plain(l) {
            mi::mi_zalloc(l.size()).cast()
        } else {
            mi::mi_zalloc_aligned(l.size(), l.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _: std::alloc::Layout) {
        mi::mi_free(p.cast());
    }

    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, size: usize) -> *mut u8 {
        if l.align() <= MI_MAX_ALIGN && l.align() <= size {
            mi::mi_realloc(p.cast(), size).cast()
        } else {
            mi::mi_realloc_aligned(p.cast(), size, l.align()).cast()
        }
    }
}
