//! Cuts one stream into sliding windows: checks sample-index continuity, resamples to the model's rate, and
//! emits a window of the model's length every `hop` samples, with the stream sample range it covers.

use std::collections::VecDeque;

use crate::pipeline::resample::StreamResampler;

/// A window ready for the model, with where it came from in the client's stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cut {
    /// 0, 1, 2, ... over the stream's life, across discontinuities.
    pub index: u64,
    /// Client sample indices of the window's first and last samples.
    pub first_sample: u64,
    pub last_sample: u64,
    /// `window x channels` model-rate samples, interleaved.
    pub samples: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    Window(Cut),
    /// A chunk did not start where the last one ended; windowing restarted at `received`.
    Discontinuity {
        expected: u64,
        received: u64,
        samples_discarded: u64,
    },
}

/// Sliding-window state of one stream. Windows are cut lazily, one per [`Framer::next_event`], so a chunk with
/// a small hop never turns into a heap of window copies before backpressure can act.
pub(crate) struct Framer {
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
    /// Model-rate frames of the current segment not yet behind every future window. A ring: frames behind every
    /// window leave from its front without moving the rest.
    buf: VecDeque<f32>,
    /// Segment-relative model-rate index of `buf`'s first frame.
    buf_start: u64,
    /// Segment-relative model-rate index of the next window's first frame.
    next_start: u64,
    next_index: u64,
    /// A chunk after a discontinuity, held until the old segment's last windows are out.
    deferred: Option<Deferred>,
    scratch: Vec<f32>,
}

struct Deferred {
    expected: u64,
    first: u64,
    frames: Vec<f32>,
}

impl Framer {
    /// `window` and `hop` are in model-rate frames; `resampler` is `None` when the stream is at the model's rate.
    pub(crate) fn new(
        window: usize,
        hop: usize,
        channels: usize,
        resampler: Option<StreamResampler>,
    ) -> Self {
        let in_per_out = resampler.as_ref().map_or(1.0, |r| 1.0 / r.ratio());
        Self {
            window,
            hop: hop.max(1),
            channels: channels.max(1),
            resampler,
            in_per_out,
            origin: 0,
            expected: None,
            buf: VecDeque::new(),
            buf_start: 0,
            next_start: 0,
            next_index: 0,
            deferred: None,
            scratch: Vec::new(),
        }
    }

    /// Whether the stream is resampled to the model's rate (its windows hold no client sample as sent).
    pub(crate) fn resamples(&self) -> bool {
        self.resampler.is_some()
    }

    /// Takes a chunk of interleaved frames starting at client index `first`. Drain [`Framer::next_event`] before
    /// pushing again.
    pub(crate) fn push(&mut self, first: u64, frames: Vec<f32>) -> Result<(), String> {
        debug_assert!(
            self.deferred.is_none(),
            "push before the previous chunk's events were drained"
        );
        let end = first.saturating_add((frames.len() / self.channels) as u64);
        match self.expected.replace(end) {
            None => self.origin = first,
            Some(expected) if expected != first => {
                // The old segment keeps what it was owed: its resampler tail can still complete a window.
                self.flush_resampler()?;
                self.deferred = Some(Deferred {
                    expected,
                    first,
                    frames,
                });
                return Ok(());
            }
            Some(_) => {}
        }
        self.append(&frames)
    }

    /// The stream ended: flushes the resampler so its last samples can still complete a window.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        self.flush_resampler()
    }

    /// The next window or discontinuity, in stream order; `None` when the input so far is used up.
    pub(crate) fn next_event(&mut self) -> Result<Option<Event>, String> {
        if let Some(cut) = self.cut_one() {
            return Ok(Some(Event::Window(cut)));
        }
        let Some(d) = self.deferred.take() else {
            return Ok(None);
        };
        let samples_discarded = d
            .expected
            .saturating_sub(self.client_index(self.next_start));
        self.restart(d.first);
        self.append(&d.frames)?;
        Ok(Some(Event::Discontinuity {
            expected: d.expected,
            received: d.first,
            samples_discarded,
        }))
    }

    /// Client index from which a reconnecting client gets the next window that was not cut yet; `None` before the
    /// first chunk.
    pub(crate) fn resume_from(&self) -> Option<u64> {
        self.expected.map(|_| self.client_index(self.next_start))
    }

    /// Model-rate frames held (memory use is this plus at most one deferred chunk).
    #[cfg(test)]
    pub(crate) fn buffered_frames(&self) -> usize {
        self.buf.len() / self.channels
    }

    fn append(&mut self, frames: &[f32]) -> Result<(), String> {
        match self.resampler.as_mut() {
            Some(rs) => {
                self.scratch.clear();
                rs.push(frames, &mut self.scratch)?;
                self.buf.extend(&self.scratch);
            }
            None => self.buf.extend(frames),
        }
        Ok(())
    }

    fn flush_resampler(&mut self) -> Result<(), String> {
        if let Some(rs) = self.resampler.as_mut() {
            self.scratch.clear();
            rs.finish(&mut self.scratch)?;
            self.buf.extend(&self.scratch);
        }
        Ok(())
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
        if self.resampler.is_none() {
            return self.origin.saturating_add(model_index);
        }
        self.origin
            .saturating_add((model_index as f64 * self.in_per_out).round() as u64)
    }

    fn cut_one(&mut self) -> Option<Cut> {
        let ch = self.channels;
        let end = self.buf_start + (self.buf.len() / ch) as u64;
        if self.next_start + self.window as u64 > end {
            // Frames before the next window's start are behind every future window (all of them when hop > window).
            let drop = self.next_start.min(end) - self.buf_start;
            self.buf.drain(..drop as usize * ch);
            self.buf_start += drop;
            return None;
        }
        let offset = (self.next_start - self.buf_start) as usize * ch;
        let cut = Cut {
            index: self.next_index,
            first_sample: self.client_index(self.next_start),
            last_sample: self.client_index(self.next_start + self.window as u64 - 1),
            samples: copy_range(&self.buf, offset, self.window * ch),
        };
        self.next_index += 1;
        self.next_start += self.hop as u64;
        Some(cut)
    }
}

/// `len` values of `ring` from `from`, in one or two slice copies (the ring may wrap inside the range).
fn copy_range(ring: &VecDeque<f32>, from: usize, len: usize) -> Vec<f32> {
    let (a, b) = ring.as_slices();
    let mut out = Vec::with_capacity(len);
    if from < a.len() {
        let end = (from + len).min(a.len());
        out.extend_from_slice(&a[from..end]);
        out.extend_from_slice(&b[..len - (end - from)]);
    } else {
        out.extend_from_slice(&b[from - a.len()..from - a.len() + len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(from: u64, n: usize) -> Vec<f32> {
        (from..from + n as u64).map(|i| i as f32).collect()
    }

    /// Pushes a chunk and drains its events.
    fn feed(f: &mut Framer, first: u64, frames: &[f32], events: &mut Vec<Event>) {
        f.push(first, frames.to_vec()).unwrap();
        drain(f, events);
    }

    /// Ends the stream and drains what the resampler flush completes.
    fn finish(f: &mut Framer, events: &mut Vec<Event>) {
        f.finish().unwrap();
        drain(f, events);
    }

    fn drain(f: &mut Framer, events: &mut Vec<Event>) {
        while let Some(e) = f.next_event().unwrap() {
            events.push(e);
        }
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
            feed(&mut f, at, c, &mut events);
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
        feed(&mut f, 0, &ramp(0, 5), &mut ev); // windows at 0
        feed(&mut f, 10, &ramp(10, 6), &mut ev); // gap of 5: restart at 10 -> windows at 10, 12
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
        feed(&mut f, 0, &ramp(0, 6), &mut ev);
        feed(&mut f, 3, &ramp(3, 8), &mut ev);
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
        assert_eq!(
            f.resume_from(),
            Some(11),
            "the next window starts at client sample 11"
        );
    }

    #[test]
    fn stream_may_start_at_any_index() {
        let mut f = Framer::new(4, 4, 1, None);
        let mut ev = Vec::new();
        feed(&mut f, 1_000_000, &ramp(1_000_000, 8), &mut ev);
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
            feed(&mut f, k as u64 * 1000, c, &mut ev);
        }
        finish(&mut f, &mut ev);
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

    #[test]
    fn a_gap_on_a_resampled_stream_keeps_the_windows_already_received() {
        let rs = StreamResampler::new(48_000, 12_000, 1).unwrap();
        let mut f = Framer::new(2048, 1024, 1, Some(rs));
        let mut ev = Vec::new();
        let x: Vec<f32> = (0..8_592).map(|i| (i as f32 * 0.01).sin()).collect();
        feed(&mut f, 0, &x, &mut ev);
        feed(&mut f, 1_000_000, &x, &mut ev);
        finish(&mut f, &mut ev);
        let kinds: Vec<String> = ev
            .iter()
            .map(|e| match e {
                Event::Window(c) => format!("w{} {}..{}", c.index, c.first_sample, c.last_sample),
                Event::Discontinuity {
                    expected, received, ..
                } => format!("gap {expected}->{received}"),
            })
            .collect();
        // 8592 client samples = 2148 model samples: window 0 was complete before the gap, so it is delivered first.
        assert_eq!(kinds[0], "w0 0..8188");
        assert_eq!(kinds[1], "gap 8592->1000000");
        assert_eq!(kinds[2], "w1 1000000..1008188");
    }

    #[test]
    fn a_range_is_copied_out_of_a_ring_that_wraps() {
        // Capacity 8, head moved to 6: values 0..8 lie as [6, 7] at the back and [0..6] at the front of memory.
        let mut ring: VecDeque<f32> = VecDeque::with_capacity(8);
        ring.extend([-1.0; 6]);
        ring.extend(ramp(0, 2).iter());
        ring.drain(..6);
        ring.extend(ramp(2, 6).iter());
        assert!(!ring.as_slices().1.is_empty(), "the ring wraps");
        for from in 0..8 {
            for len in 0..=8 - from {
                assert_eq!(
                    copy_range(&ring, from, len),
                    ramp(from as u64, len),
                    "{from}+{len}"
                );
            }
        }
    }

    #[test]
    fn windows_are_cut_lazily_so_a_tiny_hop_does_not_pile_up_copies() {
        let mut f = Framer::new(2048, 1, 1, None);
        f.push(0, ramp(0, 65_536)).unwrap();
        // Nothing is cut until asked: only the chunk itself is held.
        assert_eq!(f.buffered_frames(), 65_536);
        let first = f.next_event().unwrap();
        assert!(matches!(first, Some(Event::Window(Cut { index: 0, .. }))));
        let mut n = 1;
        while let Some(Event::Window(c)) = f.next_event().unwrap() {
            assert_eq!(c.first_sample, n);
            n += 1;
        }
        assert_eq!(n, 65_536 - 2048 + 1);
        assert!(
            f.buffered_frames() < 2048,
            "frames behind every future window are released"
        );
    }

    #[test]
    fn indices_near_the_top_of_the_range_do_not_overflow() {
        let mut f = Framer::new(4, 1 << 20, 1, None);
        let mut ev = Vec::new();
        feed(&mut f, u64::MAX - 8, &ramp(0, 8), &mut ev);
        assert_eq!(windows(&ev).len(), 1);
        assert_eq!(
            f.resume_from(),
            Some(u64::MAX),
            "saturates instead of wrapping"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any window, hop and chunking, with gaps and overlaps anywhere: windows come out in order, each holds
            /// consecutive client samples of one segment only (never stitched across a discontinuity), starts a
            /// whole number of hops after its segment's start, and a discontinuity is reported exactly where a
            /// chunk does not start where the last one ended.
            #[test]
            fn windows_are_consecutive_in_order_and_never_stitched(
                window in 2usize..48,
                hop in 1usize..64,
                chunks in proptest::collection::vec((1usize..90, -40i64..40, any::<bool>()), 1..40),
            ) {
                let mut f = Framer::new(window, hop, 1, None);
                let mut events = Vec::new();
                let mut at: u64 = 1_000;
                let mut expected_gaps = 0;
                let mut first_chunk = true;
                for (len, jump, gap) in chunks {
                    if gap && !first_chunk && jump != 0 {
                        at = at.saturating_add_signed(jump);
                        expected_gaps += 1;
                    }
                    first_chunk = false;
                    // Sample values are their client index: a stitched window shows as a jump.
                    let data: Vec<f32> = (at..at + len as u64).map(|i| i as f32).collect();
                    f.push(at, data).unwrap();
                    drain(&mut f, &mut events);
                    at += len as u64;
                }
                let mut next_index = 0;
                let mut segment_start: Option<u64> = None;
                let mut gaps = 0;
                for e in &events {
                    match e {
                        Event::Window(c) => {
                            prop_assert_eq!(c.index, next_index);
                            next_index += 1;
                            prop_assert_eq!(c.samples.len(), window);
                            for (k, v) in c.samples.iter().enumerate() {
                                prop_assert_eq!(*v, (c.first_sample + k as u64) as f32);
                            }
                            prop_assert_eq!(c.last_sample, c.first_sample + window as u64 - 1);
                            let start = *segment_start.get_or_insert(1_000);
                            prop_assert_eq!((c.first_sample - start) % hop as u64, 0);
                        }
                        Event::Discontinuity { received, .. } => {
                            gaps += 1;
                            segment_start = Some(*received);
                        }
                    }
                }
                prop_assert_eq!(gaps, expected_gaps);
            }
        }
    }
}
