//! Lathe: a self-hosted fine-tuning platform served over gRPC.
//! See ARCHITECTURE.md for the map.

pub mod api;
pub mod blobs;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod engine;
pub mod error;
pub mod evals;
pub mod graders;
pub mod ids;
pub mod inference;
pub mod jobs;
pub mod models;
pub mod paging;
pub mod server;
pub mod store;

pub mod proto {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("lathe.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lathe_descriptor");
}

/// mimalloc for every binary that links Lathe. Training allocates and frees
/// activation buffers of many sizes each step; under glibc's malloc the
/// process kept freed buffers and grew over a run (the Banking77 run's
/// resident peak climbed a third above its per-step peak).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the sys crate
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Lets mimalloc keep freed memory for a second before giving it back to the
/// OS (its default is 10 ms). A training step frees and reallocates hundreds
/// of megabytes of activations; returned at once, every page came back
/// zero-filled by the kernel on the next step (`clear_page` was 14% of a
/// step's profile); ingestion's per-block buffers did the same. An operator's
/// `MIMALLOC_PURGE_DELAY` wins. Idempotent; the server calls it at start and
/// the engine when a model loads.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            // The operator chose; mimalloc read it at start.
            return;
        }
        // SAFETY: sets a documented option to a documented value; mimalloc
        // reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocator_purge_delay_is_set() {
        use super::MI_OPTION_PURGE_DELAY;
        // Run with MIMALLOC_PURGE_DELAY=777 to see that this option is the
        // one that variable sets, and that the operator's value stays.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        println!("purge delay before: {before}");
        super::tune_allocator();
        let want = match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => v.parse().unwrap(),
            Err(_) => 1000,
        };
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, want);
    }
}
