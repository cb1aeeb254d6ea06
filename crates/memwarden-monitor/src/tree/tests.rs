//! Tests of the tree sampler, on real processes where they can run.

use super::*;
use std::os::unix::process::CommandExt;
use std::process::Command;

#[test]
#[allow(unsafe_code)]
fn samples_a_real_child_and_its_grandchild() {
    let start = Instant::now();
    let mut child = Command::new("sh")
        .args(["-c", "sleep 2 & sleep 2; wait"])
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let me = std::process::id() as i32;
    let mut sampler = TreeSampler::new(me, start, SamplerOptions::default(), None);
    sampler.adopt(child.id() as i32, me, &[]);
    // A forked child is read as `sh` until it has exec'd `sleep`: under load that can
    // take several ticks, so sampling goes on until a `sleep` was read too.
    let saw_sleep = |sampler: &TreeSampler| {
        sampler
            .processes()
            .iter()
            .any(|r| r.cmdline.first().is_some_and(|c| c.contains("sleep")))
    };
    let mut seen = 0;
    for _ in 0..80 {
        let totals = sampler.sample();
        seen = seen.max(totals.processes);
        assert!(totals.rss_bytes >= totals.anon_bytes);
        if seen >= 3 && saw_sleep(&sampler) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(seen >= 3, "sh and both sleeps sampled, saw {seen}");
    let records = sampler.processes();
    assert!(records.iter().all(|r| r.peak_rss_bytes > 0));
    assert!(saw_sleep(&sampler), "{records:?}");
    // SAFETY: killpg has no memory-safety preconditions; the group is the child's own.
    unsafe { libc::killpg(child.id() as i32, libc::SIGKILL) };
    child.wait().expect("wait");
}

#[test]
fn a_zombie_waiting_to_be_reaped_is_one_process_not_two() {
    let me = std::process::id() as i32;
    let mut sampler = TreeSampler::new(me, Instant::now(), SamplerOptions::default(), None);
    let mut child = Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()
        .expect("spawn sh");
    let pid = child.id() as i32;
    sampler.adopt(
        pid,
        me,
        &["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()],
    );
    for _ in 0..10 {
        sampler.sample(); // the child exits and lingers as a zombie: listed, no memory
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().expect("reap");
    sampler.record_exit(pid, ExitStatus::Code(status.code().expect("code")), 1 << 20);
    let records: Vec<_> = sampler
        .processes()
        .into_iter()
        .filter(|r| r.pid == pid)
        .collect();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].exit, Some(ExitStatus::Code(3)));
    assert_eq!(records[0].cmdline.first().map(String::as_str), Some("sh"));
}

#[test]
fn a_process_that_exited_between_reads_is_not_a_survivor() {
    let me = std::process::id() as i32;
    let mut sampler = TreeSampler::new(me, Instant::now(), SamplerOptions::default(), None);
    let mut child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id() as i32;
    sampler.adopt(pid, me, &["sleep".to_owned(), "30".to_owned()]);
    for _ in 0..20 {
        sampler.sample(); // flat memory: reads become every few ticks
    }
    // Its parent (here the test) reaps it, as a pool reaps its workers: memwarden is not
    // told, and no tick has read it since.
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(sampler.live_pids().contains(&pid), "still tracked");
    assert!(!sampler.surviving_pids().contains(&pid), "but not running");
}

#[test]
fn a_process_reaped_before_any_sample_keeps_its_kernel_peak() {
    let mut sampler = TreeSampler::new(1, Instant::now(), SamplerOptions::default(), None);
    sampler.record_exit(4_000_000, ExitStatus::Code(3), 5 << 20);
    let record = &sampler.processes()[0];
    assert_eq!(
        (record.peak_rss_bytes, record.peak_rss_source),
        (5 << 20, PeakSource::RuMaxrss)
    );
    assert_eq!(record.exit, Some(ExitStatus::Code(3)));
    assert!(!record.alive);
}

#[test]
fn the_kernel_mark_is_the_peak_unless_a_sample_beats_it_beyond_counting_slack() {
    let mut record = ProcessRecord::new(1, 0, Vec::new(), Duration::ZERO);
    record.raise_rss(100 << 20, PeakSource::Sampled);
    assert_eq!(
        (record.peak_rss_bytes, record.peak_rss_source),
        (100 << 20, PeakSource::Sampled)
    );
    record.raise_rss((100 << 20) - rss_counter_slack_bytes(), PeakSource::VmHwm);
    assert_eq!(
        record.peak_rss_source,
        PeakSource::VmHwm,
        "within slack: the kernel's figure"
    );
    assert_eq!(
        record.peak_rss_bytes,
        (100 << 20) - rss_counter_slack_bytes()
    );
    record.raise_rss(200 << 20, PeakSource::Sampled);
    assert_eq!(
        (record.peak_rss_bytes, record.peak_rss_source),
        (200 << 20, PeakSource::Sampled),
        "a later spike"
    );
    record.raise_rss(201 << 20, PeakSource::RuMaxrss);
    assert_eq!(
        (record.peak_rss_bytes, record.peak_rss_source),
        (201 << 20, PeakSource::RuMaxrss)
    );
    record.raise_rss(150 << 20, PeakSource::VmHwm);
    assert_eq!(record.peak_rss_bytes, 201 << 20, "marks never go down");
}

#[test]
fn pss_estimate_follows_rss_between_walks() {
    let live = Live {
        record: 0,
        name: None,
        samples: 0,
        statm: File::open("/proc/self/statm").expect("open"),
        last_status: Instant::now(),
        shmem_bytes: 0,
        last_smaps: Some((Instant::now(), 100, 60, 40)),
        last_rss_bytes: 100,
        last_statm: None,
        stable_reads: 0,
        skip: 0,
    };
    assert_eq!(estimate_pss_uss(&live, 150), (110, 90));
    assert_eq!(estimate_pss_uss(&live, 20), (0, 0));
}
