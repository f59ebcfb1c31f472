//! Where the pipeline's time goes: CPU time per process over the measured phase, read from
//! `/proc` (Linux), for the processes named with `--cpu-of NAME=PID` and for the load generator
//! itself. A process's figure includes its children (PostgreSQL's backends are children of the
//! postmaster), the live ones and those that exited meanwhile. Also the peak resident set size
//! of each process itself (`VmHWM`, since it started; not its children's).

use std::collections::BTreeMap;

use serde::Serialize;

/// `/proc` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses `NAME=PID`.
pub fn parse_watched(text: &str) -> Result<Watched, String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {text:?}"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|e| format!("the PID in {text:?}: {e}"))?;
    Ok(Watched {
        name: name.trim().to_owned(),
        pid,
    })
}

/// One line of `/proc/PID/stat`, the fields that matter here.
struct Stat {
    ppid: u32,
    /// utime + stime, in ticks.
    own: u64,
    /// cutime + cstime: children that exited and were waited for, in ticks.
    reaped_children: u64,
}

fn stat(path: &std::path::Path) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: field(4)? as u32,
        own: field(14)? + field(15)?,
        reaped_children: field(16)? + field(17)?,
    })
}

/// CPU seconds used so far by `pid` and its children; `None` when the process is gone.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let parent = stat(
        &std::path::Path::new("/proc")
            .join(pid.to_string())
            .join("stat"),
    )?;
    let live_children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|entry| stat(&entry.path().join("stat")))
        .filter(|child| child.ppid == pid)
        .map(|child| child.own)
        .sum();
    Some((parent.own + parent.reaped_children + live_children) as f64 / TICKS_PER_SECOND)
}

/// The peak resident set size of `pid` so far, in MiB (`VmHWM` in `/proc/PID/status`).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds and peak RSS per watched process (and `loadtest`, this process) at one moment.
pub struct Snapshot(BTreeMap<String, (f64, Option<f64>)>);

pub fn snapshot(watched: &[Watched]) -> Snapshot {
    let me = Watched {
        name: "loadtest".to_owned(),
        pid: std::process::id(),
    };
    let mut out = BTreeMap::new();
    for w in watched.iter().chain([&me]) {
        if let Some(seconds) = cpu_seconds(w.pid) {
            out.insert(w.name.clone(), (seconds, peak_rss_mib(w.pid)));
        }
    }
    Snapshot(out)
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub process: String,
    pub cpu_seconds: f64,
    /// CPU milliseconds per document signed.
    pub ms_per_document: f64,
    /// Share of all the CPU time counted here.
    pub share: f64,
    /// The process's largest resident set since it started, in MiB.
    pub peak_rss_mib: Option<f64>,
}

/// CPU used between two snapshots, per process, largest first.
pub fn usage(before: &Snapshot, after: &Snapshot, documents: u64) -> Vec<Usage> {
    let used: Vec<(String, f64, Option<f64>)> = after
        .0
        .iter()
        .filter_map(|(name, (end, rss))| Some((name.clone(), end - before.0.get(name)?.0, *rss)))
        .collect();
    let total: f64 = used.iter().map(|(_, s, _)| s).sum();
    let mut out: Vec<Usage> = used
        .into_iter()
        .map(|(process, cpu_seconds, peak_rss_mib)| Usage {
            ms_per_document: cpu_seconds * 1e3 / documents.max(1) as f64,
            share: if total > 0.0 {
                cpu_seconds / total
            } else {
                0.0
            },
            process,
            cpu_seconds,
            peak_rss_mib,
        })
        .collect();
    out.sort_by(|a, b| b.cpu_seconds.total_cmp(&a.cpu_seconds));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_counts_toward_its_parent() {
        let me = std::process::id();
        let before = cpu_seconds(me).expect("this process exists");
        let mut child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        child.wait().unwrap();
        let after = cpu_seconds(me).unwrap();
        assert!(
            after - before >= 0.05,
            "a shell loop of 300k steps used CPU: {before} → {after}"
        );
    }

    #[test]
    fn the_peak_resident_set_grows_with_memory_touched() {
        let me = std::process::id();
        let before = peak_rss_mib(me).expect("VmHWM of this process");
        let touched = vec![1u8; 64 << 20];
        let after = peak_rss_mib(me).unwrap();
        assert!(after - before >= 32.0, "{before} MiB → {after} MiB");
        drop(std::hint::black_box(touched));
    }

    #[test]
    fn watched_processes_are_named_name_equals_pid() {
        let w = parse_watched("worker-1=4242").unwrap();
        assert_eq!((w.name.as_str(), w.pid), ("worker-1", 4242));
        assert!(parse_watched("4242").is_err());
        assert!(parse_watched("api=x").is_err());
    }
}
