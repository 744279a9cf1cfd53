//! CPU time of this process's threads by role (inference workers, the server's async threads, the benchmark's
//! own client), read from Linux's per-thread scheduler statistics, so the bench can say what the server spent per
//! window apart from the client that shares its cores; and, on request, the client kept on CPUs of its own.

use crate::pipeline::batch::INFER_THREAD;

/// The async runtime threads the benchmark's client runs on (named so their CPU time is not counted as the
/// server's).
pub(crate) const CLIENT_THREAD: &str = "bench-client";

/// Nanoseconds on CPU so far, summed over the threads of each role.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuTimes {
    /// `drsn-infer-*`: ONNX Runtime and what the workers do around it.
    pub inference: u64,
    /// Every other thread of the server (the async runtime: network, decoding, windowing, scheduling, replies).
    pub server: u64,
    pub client: u64,
}

impl CpuTimes {
    /// Now; `None` where the per-thread statistics cannot be read (not Linux).
    pub(crate) fn now() -> Option<Self> {
        let mut t = Self::default();
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(dir.join("comm")),
                std::fs::read_to_string(dir.join("schedstat")),
            ) else {
                continue; // the thread ended while being read
            };
            let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
            let comm = comm.trim_end();
            if comm.starts_with(INFER_THREAD) {
                t.inference += ns;
            } else if comm.starts_with(CLIENT_THREAD) {
                t.client += ns;
            } else {
                t.server += ns;
            }
        }
        Some(t)
    }

    /// All roles together.
    pub(crate) fn total(self) -> u64 {
        self.inference + self.server + self.client
    }

    /// What was spent since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            inference: self.inference.saturating_sub(earlier.inference),
            server: self.server.saturating_sub(earlier.server),
            client: self.client.saturating_sub(earlier.client),
        }
    }
}

/// CPUs set apart for the client and those left to the server (and to raw ONNX Runtime).
#[derive(Debug, Clone)]
pub(crate) struct Split {
    pub server: Vec<usize>,
    pub client: Vec<usize>,
}

/// Splits the CPUs this process may run on: the last `client` for the benchmark's client, the rest for the server,
/// and moves every thread that exists now onto the server's (threads started later inherit it).
#[cfg(target_os = "linux")]
pub(crate) fn split(client: usize) -> anyhow::Result<Split> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;
    let mask = sched_getaffinity(Pid::from_raw(0))?;
    let allowed: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| mask.is_set(c).unwrap_or(false))
        .collect();
    anyhow::ensure!(
        client >= 1 && client < allowed.len(),
        "--client-cpus {client}: this process may run on {} CPU(s); the client needs at least one and the server \
         at least one",
        allowed.len()
    );
    let (server, client) = allowed.split_at(allowed.len() - client);
    let split = Split {
        server: server.to_vec(),
        client: client.to_vec(),
    };
    for task in std::fs::read_dir("/proc/self/task")? {
        let tid: i32 = task?.file_name().to_string_lossy().parse()?;
        // A thread may end meanwhile: nothing to move then.
        let _ = pin(Pid::from_raw(tid), &split.server);
    }
    Ok(split)
}

#[cfg(not(target_os = "linux"))]
pub fn split(_client: usize) -> anyhow::Result<Split> {
    anyhow::bail!("--client-cpus needs Linux (thread affinity)")
}

/// Keeps the calling thread on `cpus`.
pub(crate) fn pin_this_thread(cpus: &[usize]) {
    #[cfg(target_os = "linux")]
    if let Err(err) = pin(nix::unistd::Pid::from_raw(0), cpus) {
        tracing::warn!(%err, "cannot pin a benchmark client thread");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpus;
}

#[cfg(target_os = "linux")]
fn pin(tid: nix::unistd::Pid, cpus: &[usize]) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    nix::sched::sched_setaffinity(tid, &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This thread's CPU time so far in nanoseconds.
    fn this_thread_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_busy_named_thread_is_counted_in_its_role() {
        let Some(before) = CpuTimes::now() else {
            return; // not Linux: nothing to read
        };
        // Each thread spins 30 ms of CPU, then stays alive until its time has been read.
        let sampled = std::sync::Arc::new(std::sync::Barrier::new(3));
        let spin = |name: &str| {
            let sampled = sampled.clone();
            std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || {
                    let (start, wall) = (this_thread_ns(), std::time::Instant::now());
                    let mut x = 0u64;
                    while this_thread_ns().saturating_sub(start) < 30_000_000
                        && wall.elapsed().as_secs() < 5
                    {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                        }
                    }
                    sampled.wait();
                    sampled.wait();
                })
                .expect("a test thread starts")
        };
        let threads = [spin(CLIENT_THREAD), spin(&format!("{INFER_THREAD}-9"))];
        sampled.wait();
        let spent = CpuTimes::now().map(|t| t.since(before)).unwrap_or_default();
        sampled.wait();
        for t in threads {
            let _ = t.join();
        }
        assert!(spent.client >= 30_000_000, "{spent:?}");
        assert!(spent.inference >= 30_000_000, "{spent:?}");
    }

    #[test]
    fn a_split_leaves_at_least_one_cpu_on_each_side() {
        // Only the refusals: a split that succeeds would pin this test binary's threads.
        for client in [0, 1 << 20] {
            let err = split(client).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("--client-cpus"), "{err}");
        }
    }
}
