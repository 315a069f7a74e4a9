//! The CPU priority of a thread that does background work beside the
//! critical path: lowered while the critical path runs, raised back when
//! the work becomes the critical path itself.
//!
//! The batch's look at what is served runs beside the server's config
//! test, which is one busy core for seconds at 10,000 sites. With both at
//! the same priority, the look's handshakes (ours and the server's side of
//! them) took a share of the config test's core and made it ~1 s longer;
//! at nice 19 they run in what the test leaves and still end before it
//! (docs/performance.md).

use std::sync::Mutex;

use crate::par::lock;

/// The lowest priority, as `nice -n 19`.
const LOWEST: i32 = 19;

/// One background thread's priority. [`Background::lower`] on the thread,
/// [`Background::restore`] from anywhere, in either order.
#[derive(Debug, Default)]
pub struct Background {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The lowered thread and the niceness it had.
    lowered: Option<(nix::libc::id_t, i32)>,
    restored: bool,
}

impl Background {
    /// Lower the calling thread to nice 19, unless [`Background::restore`]
    /// came first. Best effort: a refusal leaves it as it was.
    pub fn lower(&self) {
        let mut state = lock(&self.state);
        if state.restored {
            return;
        }
        let tid = nix::unistd::gettid().as_raw() as nix::libc::id_t;
        let Some(was) = niceness(tid) else { return };
        if was < LOWEST && set_niceness(tid, LOWEST) {
            state.lowered = Some((tid, was));
        }
    }

    /// Give the thread its priority back. Raising it needs CAP_SYS_NICE
    /// (root has it); without, the thread stays low, which only matters on
    /// a busy machine.
    pub fn restore(&self) {
        let mut state = lock(&self.state);
        state.restored = true;
        if let Some((tid, was)) = state.lowered.take() {
            set_niceness(tid, was);
        }
    }
}

fn niceness(tid: nix::libc::id_t) -> Option<i32> {
    // -1 is a niceness as well as the error return: errno tells them apart.
    nix::errno::Errno::clear();
    // SAFETY: getpriority reads a scheduling attribute; no memory is shared.
    let n = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, tid) };
    (n != -1 || nix::errno::Errno::last_raw() == 0).then_some(n)
}

fn set_niceness(tid: nix::libc::id_t, n: i32) -> bool {
    // SAFETY: setpriority changes a scheduling attribute of one thread of
    // this process; no memory is shared.
    unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, n) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> i32 {
        niceness(nix::unistd::gettid().as_raw() as nix::libc::id_t).expect("own niceness")
    }

    #[test]
    fn lowers_the_calling_thread_only_and_restores_it() {
        let before = own();
        let bg = std::sync::Arc::new(Background::default());
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                bg.lower();
                let low = own();
                bg.restore();
                (low, own())
            })
            .join()
            .expect("thread")
        });
        assert_eq!(seen.0, LOWEST, "the background thread runs at nice 19");
        assert_eq!(own(), before, "the calling thread keeps its priority");
        if nix::unistd::geteuid().is_root() {
            assert_eq!(seen.1, before, "root gets the priority back");
        }
    }

    #[test]
    fn a_restore_before_the_lowering_keeps_the_priority() {
        let bg = Background::default();
        bg.restore();
        let n = std::thread::scope(|s| {
            s.spawn(|| {
                bg.lower();
                own()
            })
            .join()
            .expect("thread")
        });
        assert_eq!(n, own());
    }
}
