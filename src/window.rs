//! Cuts one stream into sliding windows: checks sample-index continuity, resamples to the model's rate, and
//! emits a window of the model's length every `hop` samples, with the stream sample range it covers.

use crate::resample::StreamResampler;

/// A window ready for the model, with where it came from in the client's stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// 0, 1, 2, ... over the stream's life, across discontinuities.
    pub index: u64,
    /// Client sample indices of the window's first and last samples.
    pub first_sample: u64,
    pub last_sample: u64,
    /// `window x channels` model-rate samples, interleaved.
    pub samples: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Window(Cut),
    /// A chunk did not start where the last one ended; windowing restarted at `received`.
    Discontinuity {
        expected: u64,
        received: u64,
        samples_discarded: u64,
    },
}

/// Sliding-window state of one stream.
pub struct Framer {
    window: usize,
    hop: usize,
    channels: usize,
    resampler: Option<StreamResampler>,
    /// Client samples per model-rate sample.
    in_per_out: f64,
    /// Client index of the current segment's first sample; segments restart at discontinuities.
    origin: u64,
    /// Client index the next chunk should start at; `None` before the first chunk.
    expected: Option<u64>,
    /// Model-rate frames of the current segment not yet behind every future window.
    buf: Vec<f32>,
    /// Segment-relative model-rate index of `buf`'s first frame.
    buf_start: u64,
    /// Segment-relative model-rate index of the next window's first frame.
    next_start: u64,
    next_index: u64,
    scratch: Vec<f32>,
}

impl Framer {
    /// `window` and `hop` are in model-rate frames; `resampler` is `None` when the stream is at the model's rate.
    pub fn new(
        window: usize,
        hop: usize,
        channels: usize,
        resampler: Option<StreamResampler>,
    ) -> Self {
        let in_per_out = resampler.as_ref().map_or(1.0, |r| 1.0 / r.ratio());
        Self {
            window,
            hop,
            channels,
            resampler,
            in_per_out,
            origin: 0,
            expected: None,
            buf: Vec::new(),
            buf_start: 0,
            next_start: 0,
            next_index: 0,
            scratch: Vec::new(),
        }
    }

    /// Takes a chunk of interleaved frames starting at client index `first`, appending what it completes to `events`.
    pub fn push(&mut self, first: u64, frames: &[f32], events: &mut Vec<Event>) {
        match self.expected {
            None => self.origin = first,
            Some(expected) if expected != first => {
                let discarded = expected.saturating_sub(self.client_index(self.next_start));
                events.push(Event::Discontinuity {
                    expected,
                    received: first,
                    samples_discarded: discarded,
                });
                self.restart(first);
            }
            Some(_) => {}
        }
        self.expected = Some(first + (frames.len() / self.channels) as u64);
        match self.resampler.as_mut() {
            Some(rs) => {
                self.scratch.clear();
                rs.push(frames, &mut self.scratch);
                self.buf.extend_from_slice(&self.scratch);
            }
            None => self.buf.extend_from_slice(frames),
        }
        self.cut(events);
    }

    /// The stream ended: flushes the resampler so its last samples can still complete a window.
    pub fn finish(&mut self, events: &mut Vec<Event>) {
        if let Some(rs) = self.resampler.as_mut() {
            self.scratch.clear();
            rs.finish(&mut self.scratch);
            self.buf.extend_from_slice(&self.scratch);
            self.cut(events);
        }
    }

    /// Client index where the next chunk should start (the end of what was received).
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Client index from which a reconnecting client gets the next window that was not cut yet.
    pub fn resume_from(&self) -> u64 {
        match self.expected {
            Some(_) => self.client_index(self.next_start),
            None => 0,
        }
    }

    fn restart(&mut self, origin: u64) {
        self.origin = origin;
        self.buf.clear();
        self.buf_start = 0;
        self.next_start = 0;
        if let Some(rs) = self.resampler.as_mut() {
            rs.reset();
        }
    }

    fn client_index(&self, model_index: u64) -> u64 {
        self.origin + (model_index as f64 * self.in_per_out).round() as u64
    }

    fn cut(&mut self, events: &mut Vec<Event>) {
        let ch = self.channels;
        let end = self.buf_start + (self.buf.len() / ch) as u64;
        while self.next_start + self.window as u64 <= end {
            let offset = (self.next_start - self.buf_start) as usize * ch;
            let samples = self.buf[offset..offset + self.window * ch].to_vec();
            events.push(Event::Window(Cut {
                index: self.next_index,
                first_sample: self.client_index(self.next_start),
                last_sample: self.client_index(self.next_start + self.window as u64 - 1),
                samples,
            }));
            self.next_index += 1;
            self.next_start += self.hop as u64;
        }
        // Frames before the next window's start are behind every future window (all of them when hop > window).
        let drop = self.next_start.min(end) - self.buf_start;
        self.buf.drain(..drop as usize * ch);
        self.buf_start += drop;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(from: u64, n: usize) -> Vec<f32> {
        (from..from + n as u64).map(|i| i as f32).collect()
    }

    fn windows(events: &[Event]) -> Vec<&Cut> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::Window(c) = e {
                    Some(c)
                } else {
                    None
                }
            })
            .collect()
    }

    /// Feeds 0..total in chunks of `chunk` and checks every window's range and content.
    fn check(window: usize, hop: usize, total: usize, chunk: usize) {
        let mut f = Framer::new(window, hop, 1, None);
        let mut events = Vec::new();
        let data = ramp(0, total);
        let mut at = 0;
        for c in data.chunks(chunk) {
            f.push(at, c, &mut events);
            at += c.len() as u64;
        }
        let cuts = windows(&events);
        let expect = if total >= window {
            (total - window) / hop + 1
        } else {
            0
        };
        assert_eq!(
            cuts.len(),
            expect,
            "window {window} hop {hop} total {total} chunk {chunk}"
        );
        for (k, c) in cuts.iter().enumerate() {
            let start = (k * hop) as u64;
            assert_eq!(c.index, k as u64);
            assert_eq!(
                (c.first_sample, c.last_sample),
                (start, start + window as u64 - 1)
            );
            assert_eq!(
                c.samples,
                ramp(start, window),
                "window {k} holds the wrong samples"
            );
        }
    }

    #[test]
    fn hop_smaller_equal_and_larger_than_the_window() {
        for hop in [1, 7, 16, 20, 64] {
            for chunk in [1, 5, 16, 33, 1000] {
                check(16, hop, 300, chunk);
            }
        }
    }

    #[test]
    fn windows_across_chunk_boundaries() {
        // Every window straddles chunks of 3 frames.
        check(2048, 1024, 10_000, 3);
        check(2048, 1024, 10_000, 4_999);
    }

    #[test]
    fn gap_restarts_windowing_at_the_new_index() {
        let mut f = Framer::new(4, 2, 1, None);
        let mut ev = Vec::new();
        f.push(0, &ramp(0, 5), &mut ev); // windows at 0
        f.push(10, &ramp(10, 6), &mut ev); // gap of 5: restart at 10 -> windows at 10, 12
        assert_eq!(
            ev[1],
            Event::Discontinuity {
                expected: 5,
                received: 10,
                samples_discarded: 3
            },
            "samples 2, 3, 4 belonged to the window that never completed"
        );
        let cuts = windows(&ev);
        let ranges: Vec<_> = cuts
            .iter()
            .map(|c| (c.index, c.first_sample, c.last_sample))
            .collect();
        assert_eq!(ranges, vec![(0, 0, 3), (1, 10, 13), (2, 12, 15)]);
        // No sample from before the gap is stitched into a later window.
        assert_eq!(cuts[1].samples, ramp(10, 4));
    }

    #[test]
    fn overlap_restarts_too() {
        let mut f = Framer::new(4, 4, 1, None);
        let mut ev = Vec::new();
        f.push(0, &ramp(0, 6), &mut ev);
        f.push(3, &ramp(3, 8), &mut ev);
        assert_eq!(
            ev[1],
            Event::Discontinuity {
                expected: 6,
                received: 3,
                samples_discarded: 2
            }
        );
        let ranges: Vec<_> = windows(&ev)
            .iter()
            .map(|c| (c.first_sample, c.last_sample))
            .collect();
        assert_eq!(ranges, vec![(0, 3), (3, 6), (7, 10)]);
        assert_eq!(f.expected(), Some(11));
    }

    #[test]
    fn stream_may_start_at_any_index() {
        let mut f = Framer::new(4, 4, 1, None);
        let mut ev = Vec::new();
        f.push(1_000_000, &ramp(1_000_000, 8), &mut ev);
        let ranges: Vec<_> = windows(&ev)
            .iter()
            .map(|c| (c.first_sample, c.last_sample))
            .collect();
        assert_eq!(ranges, vec![(1_000_000, 1_000_003), (1_000_004, 1_000_007)]);
    }

    #[test]
    fn resampled_windows_map_back_to_client_indices() {
        let rs = StreamResampler::new(48_000, 12_000, 1).unwrap();
        let mut f = Framer::new(2048, 1024, 1, Some(rs));
        let mut ev = Vec::new();
        let x: Vec<f32> = (0..48_000).map(|i| (i as f32 * 0.01).sin()).collect();
        for (k, c) in x.chunks(1000).enumerate() {
            f.push(k as u64 * 1000, c, &mut ev);
        }
        f.finish(&mut ev);
        let cuts = windows(&ev);
        // 12000 model-rate samples: (12000 - 2048) / 1024 + 1 windows.
        assert_eq!(cuts.len(), 10);
        for (k, c) in cuts.iter().enumerate() {
            assert_eq!(
                c.first_sample,
                k as u64 * 4096,
                "4 client samples per model sample"
            );
            assert_eq!(c.last_sample, (k as u64 * 1024 + 2047) * 4);
        }
    }
}
