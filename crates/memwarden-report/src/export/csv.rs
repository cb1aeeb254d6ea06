//! The timeline as CSV: one row per moment, the tree's figures and its heap.

use std::fmt::Write;

use memwarden_format::report::Report;

/// Columns, in order.
const HEADER: &str = "t_s,rss_bytes,pss_bytes,uss_bytes,anon_bytes,file_bytes,shmem_bytes,cgroup_bytes,gpu_bytes,processes,heap_bytes";

/// The run's timeline (`timeline`) and its heap (`profile.timeline`) as CSV, rows in time
/// order. The two are sampled at the monitor's ticks but thinned apart, so a row holds the
/// figures taken at its moment and leaves the others empty; so does a figure not measured
/// (no own cgroup, no GPU).
pub fn timeline_csv(report: &Report) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut rows: Vec<(f64, String, String)> = report
        .timeline
        .iter()
        .map(|p| {
            let tree = format!(
                "{},{},{},{},{},{},{},{},{}",
                p.rss_bytes,
                p.pss_bytes,
                p.uss_bytes,
                p.anon_bytes,
                p.file_bytes,
                p.shmem_bytes,
                opt(p.cgroup_bytes),
                opt(p.gpu_bytes),
                p.processes
            );
            (p.t_s, tree, String::new())
        })
        .collect();
    for point in report.profile.iter().flat_map(|p| &p.timeline) {
        match rows
            .iter_mut()
            .find(|(t, _, _)| (t - point.t_s).abs() < 1e-6)
        {
            Some(row) => row.2 = point.heap_bytes.to_string(),
            None => rows.push((
                point.t_s,
                ",,,,,,,,".to_owned(),
                point.heap_bytes.to_string(),
            )),
        }
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = String::from(HEADER);
    out.push('\n');
    for (t_s, tree, heap) in rows {
        let _ = writeln!(out, "{t_s:.3},{tree},{heap}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use memwarden_format::report::{HeapTimelinePoint, Profile, ProfileMode, TimelinePoint};

    #[test]
    fn tree_and_heap_figures_share_rows_by_moment() {
        let json = r#"{"schema":"memwarden.report/1","memwarden_version":"0","command":[],"cwd":"/",
            "started_at_unix_s":0,"duration_s":1,"exit":{"code":0,"signal":null,"signal_name":null,
            "oom_killed":false,"oom_killed_by":null,"oom_at_bytes":null,"memwarden_exit_code":0},
            "peak":{"rss_bytes":1,"source":"VmHWM","pss_bytes":null,"uss_bytes":null,"anon_bytes":null,
            "file_bytes":null,"shmem_bytes":null,"cgroup_bytes":null,"heap_bytes":null,"gpu_bytes":null,
            "at_s":0,"pid":null,"sources":{}},"limits":{"cgroup_version":null,"cgroup_path":null,
            "cgroup_limit_bytes":null,"cgroup_usage_at_start_bytes":null,"cgroup_oom_kills_during_run":null,
            "system_total_bytes":1,"system_available_at_start_bytes":1,"tightest_limit_bytes":1,
            "tightest_limit_source":"system","headroom_bytes":0},"budget":{"limit_bytes":null,
            "metric":"peak.rss_bytes","status":"unset","hard_limit_bytes":null,"enforced_by":"none",
            "enforcement_note":null},"gpu":{"status":"unavailable","reason":null,"devices":[]},
            "monitor":{"interval_ms":50,"samples":2,"self_cpu_s":0,"self_cpu_share":0,"own_cgroup":false},
            "processes":[],"timeline":[],"warnings":[]}"#;
        let mut report: Report = serde_json::from_str(json).expect("a report");
        report.timeline = vec![
            TimelinePoint {
                t_s: 0.1,
                rss_bytes: 10,
                cgroup_bytes: Some(12),
                processes: 1,
                ..TimelinePoint::default()
            },
            TimelinePoint {
                t_s: 0.2,
                rss_bytes: 20,
                processes: 2,
                ..TimelinePoint::default()
            },
        ];
        let mut profile = Profile::empty(ProfileMode::Sampled);
        for (t_s, heap_bytes) in [(0.2, 7), (0.15, 5)] {
            profile.timeline.push(HeapTimelinePoint {
                t_s,
                heap_bytes,
                top: Vec::new(),
            });
        }
        report.profile = Some(profile);
        let csv = timeline_csv(&report);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(
            &lines[1..],
            [
                "0.100,10,0,0,0,0,0,12,,1,",
                "0.150,,,,,,,,,,5",
                "0.200,20,0,0,0,0,0,,,2,7",
            ]
        );
        assert!(lines.iter().all(|l| l.split(',').count() == 11));
    }
}
