//! Work on many sites at once with scoped OS threads: what the engine's
//! steps (check, repair, stage, swap, commit) use to spread per-site file
//! work over the cores and over the waits of the disk.

use std::sync::{Mutex, MutexGuard};

/// Map `f` over `items` on up to `threads` threads (this one among them);
/// results in input order. A thread the OS refuses leaves its share to the
/// others. A panic in `f` is raised again here.
pub fn map<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let threads = threads.min(n);
    if threads <= 1 {
        return items.into_iter().map(f).collect();
    }
    let queue = Mutex::new(items.into_iter().enumerate());
    let work = || {
        let mut done = Vec::new();
        loop {
            let next = lock(&queue).next();
            let Some((i, t)) = next else { break };
            done.push((i, f(t)));
        }
        done
    };
    let mut slots: Vec<Option<R>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut done = work();
        for h in helpers {
            match h.join() {
                Ok(d) => done.extend(d),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        for (i, r) in done {
            slots[i] = Some(r);
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item was mapped by a worker that returned"))
        .collect()
}

/// Lock `m`. A poisoned lock only means another thread panicked while it
/// held it (that panic is raised again where it is joined); the data
/// behind it is still whole for what certswap keeps there.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cores this process may run on.
pub fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_keeps_input_order() {
        let out = map((0..1000).collect(), 7, |i: u32| i * 2);
        assert_eq!(out, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(map(vec![3], 16, |i: u32| i + 1), vec![4]);
        assert!(map(Vec::<u32>::new(), 4, |i| i).is_empty());
    }
}
