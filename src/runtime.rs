//! The server's async runtime: how many worker threads it has, and whether each keeps to a CPU of its own.
//!
//! Why pinning exists: an event on `/events` wakes one task per subscriber, all queued on the worker that
//! published it, and tokio wakes an idle worker to steal half. On a virtual machine the kernel tends to
//! wake that worker on the publisher's own CPU, where it preempts the publisher, finds little to steal
//! and parks again (17 such wake-ups per event, seen with `perf`), while the other CPU stays idle: a
//! 1,000-subscriber fan-out then runs on one core. Measured here (2 vCPUs, `examples/fanout.rs`, 1,000
//! subscribers × 50 events/s), pinning the two workers to one CPU each brought publish → socket p99
//! from 7.2–10.2 ms (12 runs) to 4.6–7.0 ms (9 runs).
//!
//! It is not the default because it has a price where the CPUs are shared: a pinned worker cannot move
//! away from another busy process (a TLS proxy on the same host, say). With the call-load generator
//! sharing the CPUs (`examples/relay_load.rs`, 400 calls), the audio relay's p99 in the socket went
//! from 119–272 µs to 199–416 µs pinned; at 200 calls it was unchanged. So it is for hosts where the
//! server runs alone and many dashboards follow calls. `auto` pins only when the process may use exactly as many CPUs as
//! it has workers, as on a dedicated VM or in a container with an exclusive cpuset; under a CPU quota
//! (a Kubernetes CPU limit without the static CPU manager) the workers are fewer than the CPUs, and it
//! stays off. It cannot see other processes, so it is for a host the server has to itself. `on` pins
//! regardless. Only worker threads are pinned (each as it first parks): blocking threads and
//! the store's writer go wherever the kernel puts them.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `WORKER_CPU_AFFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuAffinity {
    /// Pin when the process's CPUs are exactly as many as its workers.
    Auto,
    /// Pin worker i to the i-th CPU the process may use (round robin when there are more workers).
    On,
    /// Never pin: the kernel places the workers.
    #[default]
    Off,
}

impl CpuAffinity {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "on" | "true" => Some(Self::On),
            "" | "off" | "false" => Some(Self::Off),
            _ => None,
        }
    }
}

/// How the runtime is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub worker_threads: usize,
    pub affinity: CpuAffinity,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { worker_threads: default_worker_threads(), affinity: CpuAffinity::Off }
    }
}

/// One worker per CPU the process may use, as tokio's own default (std reads the cgroup CPU quota too).
pub fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where the workers run, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The n-th worker to park keeps to CPU `cpus[n % cpus.len()]` from then on.
    Pinned { cpus: Vec<usize> },
    /// Not pinned, and why.
    Unpinned { reason: String },
}

/// Decides where the workers go, from the CPUs this process may run on. Pure, so it is tested directly.
pub fn plan(config: RuntimeConfig, allowed: &[usize]) -> Placement {
    let workers = config.worker_threads;
    let unpinned = |reason: String| Placement::Unpinned { reason };
    match config.affinity {
        CpuAffinity::Off => unpinned("WORKER_CPU_AFFINITY is off (the default)".into()),
        _ if allowed.is_empty() => unpinned("the CPUs this process may use could not be read".into()),
        CpuAffinity::Auto if allowed.len() != workers => unpinned(format!(
            "{workers} workers may run on {} CPUs, so those CPUs are shared (WORKER_CPU_AFFINITY=on pins anyway)",
            allowed.len()
        )),
        CpuAffinity::Auto | CpuAffinity::On => Placement::Pinned { cpus: allowed.to_vec() },
    }
}

/// Builds the runtime `config` asks for, named `thread_name`, and says where its workers run.
pub fn build(config: RuntimeConfig, thread_name: &str) -> std::io::Result<(tokio::runtime::Runtime, Placement)> {
    let placement = plan(config, &affinity::allowed_cpus());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(config.worker_threads.max(1)).thread_name(thread_name).enable_all();
    if let Placement::Pinned { cpus } = &placement {
        let pinner = Pinner { cpus: cpus.clone(), next: AtomicUsize::new(0) };
        // Only workers park, so only workers are pinned; each once, the first time it parks (at start-up,
        // when it finds nothing to run yet).
        builder.on_thread_park(move || pinner.pin_this_worker_once());
    }
    Ok((builder.build()?, placement))
}

/// Hands out CPUs to workers in the order they first park.
#[derive(Debug)]
struct Pinner {
    /// Never empty: [`plan`] pins only to CPUs it could read.
    cpus: Vec<usize>,
    next: AtomicUsize,
}

thread_local! {
    static PINNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pinner {
    fn pin_this_worker_once(&self) {
        if PINNED.replace(true) {
            return;
        }
        let cpu = self.cpus[self.next.fetch_add(1, Ordering::Relaxed) % self.cpus.len()];
        if let Err(e) = affinity::pin_current_thread(cpu) {
            // The worker still runs, wherever the kernel puts it.
            tracing::warn!(cpu, error = %e, "a worker thread could not be pinned to its CPU");
        }
    }
}

/// The system calls, Linux only; elsewhere nothing is pinned.
pub mod affinity {
    /// The CPUs the calling thread may run on (empty when they cannot be read).
    #[cfg(target_os = "linux")]
    pub fn allowed_cpus() -> Vec<usize> {
        use nix::sched::{CpuSet, sched_getaffinity};
        match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
            Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Keeps the calling thread on `cpu`.
    #[cfg(target_os = "linux")]
    pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
        use nix::sched::{CpuSet, sched_setaffinity};
        let mut set = CpuSet::new();
        set.set(cpu)?;
        sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed_cpus() -> Vec<usize> {
        Vec::new()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pin_current_thread(_cpu: usize) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "CPU affinity is set on Linux only"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(worker_threads: usize, affinity: CpuAffinity) -> RuntimeConfig {
        RuntimeConfig { worker_threads, affinity }
    }

    #[test]
    fn auto_pins_only_when_the_cpus_are_the_processs_own() {
        // A dedicated 2-vCPU machine, or an exclusive cpuset {2,3}: one CPU per worker.
        assert_eq!(plan(config(2, CpuAffinity::Auto), &[0, 1]), Placement::Pinned { cpus: vec![0, 1] });
        assert_eq!(plan(config(2, CpuAffinity::Auto), &[2, 3]), Placement::Pinned { cpus: vec![2, 3] });
        // A 2-CPU quota on a 64-CPU host, or fewer workers than CPUs: the CPUs are shared.
        let host: Vec<usize> = (0..64).collect();
        assert!(matches!(plan(config(2, CpuAffinity::Auto), &host), Placement::Unpinned { .. }));
        assert!(matches!(plan(config(1, CpuAffinity::Auto), &[0, 1]), Placement::Unpinned { .. }));
        // Asked for, it pins anyway; asked not to, never.
        assert_eq!(plan(config(2, CpuAffinity::On), &host), Placement::Pinned { cpus: host.clone() });
        assert!(matches!(plan(config(2, CpuAffinity::Off), &[0, 1]), Placement::Unpinned { .. }));
        // Unreadable: nothing to pin to.
        assert!(matches!(plan(config(2, CpuAffinity::On), &[]), Placement::Unpinned { .. }));
    }

    #[test]
    fn the_setting_reads_as_documented() {
        assert_eq!(CpuAffinity::parse(""), Some(CpuAffinity::Off));
        assert_eq!(CpuAffinity::parse(" Auto "), Some(CpuAffinity::Auto));
        assert_eq!(CpuAffinity::parse("on"), Some(CpuAffinity::On));
        assert_eq!(CpuAffinity::parse("off"), Some(CpuAffinity::Off));
        assert_eq!(CpuAffinity::parse("0,1"), None);
    }

    /// The CPUs a thread of this process may run on, from /proc (not from the code under test).
    #[cfg(target_os = "linux")]
    fn cpus_allowed(tid: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned()
    }

    /// The ids of this process's threads named `name`.
    #[cfg(target_os = "linux")]
    fn threads_named(name: &str) -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|tid| {
                std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default().trim() == name
            })
            .collect()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pinned_workers_keep_to_one_cpu_each_and_blocking_threads_do_not() {
        let allowed = affinity::allowed_cpus();
        let workers = 2;
        let (runtime, placement) = build(config(workers, CpuAffinity::On), "pin-test").unwrap();
        assert_eq!(placement, Placement::Pinned { cpus: allowed.clone() });
        // Each worker pins itself when it first parks; idle, both park at once. Wait for that on the
        // threads' own state, with a bound.
        let pinned = |tids: &[String]| tids.iter().filter(|t| !cpus_allowed(t).contains([',', '-'])).count();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let worker_tids = loop {
            let tids = threads_named("pin-test");
            if tids.len() == workers && pinned(&tids) == workers {
                break tids;
            }
            assert!(std::time::Instant::now() < deadline, "workers not pinned: {:?}", tids);
            std::thread::yield_now();
        };
        let mut cpus: Vec<String> = worker_tids.iter().map(|t| cpus_allowed(t)).collect();
        cpus.sort();
        cpus.dedup();
        // One CPU each, different ones where the machine has them.
        assert_eq!(cpus.len(), workers.min(allowed.len()), "{cpus:?}");
        // A blocking thread (spawn_blocking: the store's reads, DNS) is left where the kernel puts it.
        let blocking = runtime.block_on(async { tokio::task::spawn_blocking(affinity::allowed_cpus).await.unwrap() });
        assert_eq!(blocking, allowed);
    }
}
