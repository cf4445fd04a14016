//! The snapshot replica runs in the CPU the shard writers leave idle.
//!
//! A replica applies every command a second time. On a machine with few cores it competes
//! with the shard writers, the release threads and the network threads for the same cores, and
//! every time the scheduler gives it a slice while a writer has a batch waiting, that batch's
//! replies wait too: the replica shows up in the latency tail, not in the throughput. So the
//! replica thread lowers its own priority (a nice value, per thread on Linux): it still uses
//! every idle cycle, but a writer that wakes up preempts it at once.
//!
//! A low priority must not let the replica fall behind for ever under sustained full load
//! (the journal it has not applied cannot be pruned, and a restart replays from its last
//! snapshot). So when it is more than a policy's worth of records behind, it asks for normal
//! priority back until it has caught up. Raising a priority again needs `CAP_SYS_NICE` (or a
//! `RLIMIT_NICE` that allows it); without it the replica stays low and says so once.

/// The priority a thread runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// The nice value the thread started with (0 for a normal process).
    Normal,
    /// Nice `n` (1..=19): less CPU when the cores are contended.
    Background(i32),
}

/// Sets the calling thread's priority. Returns false when the system refused (for example a
/// return to normal priority without the privilege); the thread keeps its old one.
pub fn set_current_thread(priority: Priority) -> bool {
    let nice = match priority {
        Priority::Normal => 0,
        Priority::Background(n) => n.clamp(1, 19),
    };
    set_nice(nice)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_nice(nice: i32) -> bool {
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours. On Linux,
    // PRIO_PROCESS with a thread id changes that one thread (every thread is a task).
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_nice: i32) -> bool {
    false
}

/// The calling thread's nice value (Linux), for tests and status.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn current_thread_nice() -> i32 {
    // SAFETY: as above; getpriority returns the nice value (-1 is also a valid value, and
    // errors cannot happen for our own thread id).
    unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_lowers_its_own_priority_and_not_its_neighbours() {
        let before = current_thread_nice();
        let lowered = std::thread::spawn(|| {
            assert!(set_current_thread(Priority::Background(12)));
            current_thread_nice()
        })
        .join()
        .expect("the test thread finished");
        assert_eq!(lowered, 12);
        assert_eq!(
            current_thread_nice(),
            before,
            "only the calling thread changes"
        );
    }
}
