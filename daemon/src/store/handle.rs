//! The store off the async runtime: [`StoreHandle::with`] runs SQLite work
//! (with `synchronous = FULL`, an fsync per commit) where no tokio worker
//! waits for it, and debug builds check that nothing reaches SQLite any
//! other way while a runtime is running.

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::runtime::{Handle, RuntimeFlavor};

use super::{Store, StoreError};

thread_local! {
    /// Set while this thread runs store work through [`StoreHandle::with`].
    static OFF_RUNTIME: Cell<bool> = const { Cell::new(false) };
    /// Set on a thread that must never wait for SQLite: the edge's, where
    /// every connection would wait with it ([`never_wait_on_this_thread`]).
    static NEVER_WAITS: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that never waits for the store: in
/// debug builds [`StoreHandle::with`] panics there, so a path that reaches
/// the store from the edge's thread fails the suites (which run debug
/// builds of the real daemon) instead of stalling every connection for an
/// fsync in a release build.
pub fn never_wait_on_this_thread() {
    NEVER_WAITS.with(|never| never.set(true));
}

/// The one way to the database once the daemon runs: cheap to clone, one
/// connection behind one lock.
#[derive(Debug, Clone)]
pub struct StoreHandle(Arc<Mutex<Store>>);

impl StoreHandle {
    /// Opens the database (see [`Store::open`]) off the runtime.
    pub fn open(dir: &Path) -> Result<StoreHandle, StoreError> {
        off_runtime(|| Store::open(dir)).map(StoreHandle::new)
    }

    /// Wraps an open store.
    pub fn new(store: Store) -> StoreHandle {
        StoreHandle(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` on the locked store. On the multi-threaded runtime it runs
    /// in `block_in_place`: the worker hands its queued tasks to another
    /// thread first, so while SQLite waits for the disk (or for the lock,
    /// held by another writer) no other connection waits with it. On a
    /// blocking thread, outside a runtime, or on a current-thread runtime
    /// (the mailbox's thread, unit tests) it runs directly; on a thread
    /// marked by [`never_wait_on_this_thread`] (the edge's) debug builds
    /// panic. Hold the lock across a commit and the
    /// registry update that follows it, so nothing falls between the two.
    pub fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        off_runtime(|| f(&mut crate::sync::lock(&self.0)))
    }
}

fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    if cfg!(debug_assertions) && NEVER_WAITS.with(Cell::get) {
        panic!("the store called on a thread that must never wait for it (the edge's)");
    }
    let run = || {
        let _mark = Mark::enter();
        f()
    };
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => run(),
    }
}

/// Marks the thread as doing store work until dropped (also when `f`
/// panics), restoring what was there.
struct Mark(bool);

impl Mark {
    fn enter() -> Mark {
        Mark(OFF_RUNTIME.with(|m| m.replace(true)))
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        OFF_RUNTIME.with(|m| m.set(self.0));
    }
}

/// In debug builds, panics when SQLite is reached from inside a tokio
/// runtime other than through [`StoreHandle::with`]: that call would hold a
/// worker thread while SQLite waits for an fsync. Every suite runs debug
/// builds of the real daemon, so a path that does it fails them.
pub(crate) fn check_off_runtime() {
    if cfg!(debug_assertions) && Handle::try_current().is_ok() && !OFF_RUNTIME.with(Cell::get) {
        panic!("SQLite called on an async worker thread; go through StoreHandle::with");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_work_through_the_handle_is_allowed_and_direct_work_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(dir.path()).unwrap();
        assert!(store.with(|s| s.members()).unwrap().is_empty());
        // From a blocking thread too (the audit writer's way).
        let again = store.clone();
        tokio::task::spawn_blocking(move || again.with(|s| s.members().unwrap().len()))
            .await
            .unwrap();
        if cfg!(debug_assertions) {
            let direct = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let guard = crate::sync::lock(&store.0);
                let _ = guard.members();
            }));
            assert!(direct.is_err(), "a direct call on a worker must be caught");
        }
    }

    #[test]
    fn a_thread_that_never_waits_cannot_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(dir.path()).unwrap();
        let marked = std::thread::spawn(move || {
            never_wait_on_this_thread();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.with(|s| s.members().is_ok())
            }))
        })
        .join()
        .unwrap();
        if cfg!(debug_assertions) {
            assert!(
                marked.is_err(),
                "the store was reached from a marked thread"
            );
        } else {
            assert!(marked.unwrap(), "release builds only pay for the wait");
        }
    }
}
