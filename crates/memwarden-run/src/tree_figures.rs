//! The tree's figures as the run goes: each tick's totals kept in a bounded timeline, the
//! sample at the RSS peak and each figure's largest value.

use memwarden_format::report::TimelinePoint;

/// Most timeline points kept; beyond, neighbours are merged by maximum and the stride doubles,
/// so an hour-long run keeps its peaks in a report of a few hundred kilobytes.
const MAX_POINTS: usize = 2000;

/// The tree's totals sampled so far, folded as they come.
#[derive(Debug, Default)]
pub struct TreeFigures {
    timeline: Vec<TimelinePoint>,
    pending: Option<(TimelinePoint, usize)>,
    stride: usize,
    /// The sample with the largest tree RSS.
    pub rss_peak: TimelinePoint,
    /// Largest value of each figure over all samples.
    pub max: TimelinePoint,
    /// Samples seen.
    pub samples: u64,
}

impl TreeFigures {
    /// No samples yet.
    pub fn new() -> Self {
        TreeFigures {
            stride: 1,
            ..Default::default()
        }
    }

    /// Adds one sample.
    pub fn push(&mut self, point: TimelinePoint) {
        self.samples += 1;
        if point.rss_bytes > self.rss_peak.rss_bytes || self.samples == 1 {
            self.rss_peak = point;
        }
        self.max = if self.samples == 1 {
            point
        } else {
            self.max.merge_max(&point)
        };
        let (merged, count) = match self.pending.take() {
            Some((pending, count)) => (pending.merge_max(&point), count + 1),
            None => (point, 1),
        };
        if count < self.stride {
            self.pending = Some((merged, count));
            return;
        }
        self.timeline.push(merged);
        if self.timeline.len() >= MAX_POINTS {
            self.timeline = self
                .timeline
                .chunks(2)
                .map(|pair| pair.iter().skip(1).fold(pair[0], |a, b| a.merge_max(b)))
                .collect();
            self.stride *= 2;
        }
    }

    /// The timeline, including a partly merged last point.
    pub fn timeline(&self) -> Vec<TimelinePoint> {
        let mut timeline = self.timeline.clone();
        if let Some((pending, _)) = self.pending {
            timeline.push(pending);
        }
        timeline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_runs_keep_a_bounded_timeline_and_every_peak() {
        let mut figures = TreeFigures::new();
        for i in 0..50_000_u64 {
            let rss = if i == 31_337 {
                10 << 30
            } else {
                (i % 100) << 20
            };
            figures.push(TimelinePoint {
                t_s: i as f64 * 0.05,
                rss_bytes: rss,
                processes: 1,
                ..Default::default()
            });
        }
        let timeline = figures.timeline();
        assert!(timeline.len() <= MAX_POINTS, "{}", timeline.len());
        assert!(timeline.len() >= MAX_POINTS / 2);
        assert_eq!(
            timeline.iter().map(|p| p.rss_bytes).max(),
            Some(10 << 30),
            "the spike survives merging"
        );
        assert_eq!(figures.rss_peak.rss_bytes, 10 << 30);
        assert!((figures.rss_peak.t_s - 31_337.0 * 0.05).abs() < 1e-6);
        assert!(
            timeline.windows(2).all(|w| w[0].t_s <= w[1].t_s),
            "time order kept"
        );
    }
}
