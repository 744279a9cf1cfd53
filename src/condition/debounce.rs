//! One sensor's condition over the windows it delivered, debounced in the stream's own sample time (a replay at any
//! speed gives the conditions real time gives): evidence decays with a half-life of signal, FAULT begins when the
//! fault share holds above `on_share` for `on_delay` and ends when it holds below `off_share` for `off_delay`.

use crate::pipeline::severity::{Zone, ZoneLimits};

/// The highest velocity taken into the sustained mean, mm/s: 10 m/s, far beyond any machine's zone D.
const MAX_VELOCITY: f32 = 10_000.0;

/// A sensor's (or machine's) condition, ordered from best to worst: a machine is as bad as its worst sensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    Normal,
    /// Not enough evidence yet, or the data stopped.
    Unknown,
    /// Most windows could not be judged (flat, clipped, out of range, impulsive): check the sensor.
    SensorFault,
    Fault,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition::Normal,
        Condition::Fault,
        Condition::SensorFault,
        Condition::Unknown,
    ];

    /// The metric label (`condition`, `to`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Fault => "fault",
            Self::SensorFault => "sensor_fault",
            Self::Unknown => "unknown",
        }
    }

    fn is_alarm(self) -> bool {
        matches!(self, Self::Fault | Self::SensorFault)
    }
}

/// How the evidence becomes a condition. Times are seconds of signal (sample indices over the sensor's rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// A window's evidence halves after this much signal.
    pub half_life_s: f64,
    /// FAULT begins when the share of fault classes in the evidence holds at or above this ...
    pub on_share: f32,
    /// ... and clears when it holds at or below this (hysteresis between the two).
    pub off_share: f32,
    /// How long a worse condition (FAULT, SENSOR_FAULT) or a new fault class must hold before it is reported.
    pub on_delay_s: f64,
    /// How long an alarm's end must hold before it is reported.
    pub off_delay_s: f64,
    /// What an UNCERTAIN window's vote weighs against an OK window's 1 (SHED windows do not vote).
    pub uncertain_weight: f32,
    /// Evidence (seconds of decayed signal) needed before NORMAL or FAULT is said; below it, UNKNOWN.
    pub min_evidence_s: f32,
    /// SENSOR_FAULT when windows the model could not judge hold this share of the evidence.
    pub sensor_fault_share: f32,
}

impl Default for Settings {
    /// Chosen on the leave-one-load-out study (README "Machine conditions"; `drsn-serve bench conditions`).
    fn default() -> Self {
        Self {
            half_life_s: 1.0,
            on_share: 0.7,
            off_share: 0.3,
            on_delay_s: 2.0,
            off_delay_s: 5.0,
            uncertain_weight: 0.5,
            min_evidence_s: 1.0,
            sensor_fault_share: 0.5,
        }
    }
}

impl Settings {
    pub fn validate(&self) -> Result<(), String> {
        let times = [self.half_life_s, self.on_delay_s, self.off_delay_s];
        if times.iter().any(|t| !(t.is_finite() && *t >= 0.0)) || self.half_life_s <= 0.0 {
            return Err("condition times must be finite, and the half-life above 0".into());
        }
        let shares = [
            self.on_share,
            self.off_share,
            self.uncertain_weight,
            self.sensor_fault_share,
        ];
        if shares.iter().any(|s| !(0.0..=1.0).contains(s)) {
            return Err("condition shares and weights must lie in [0, 1]".into());
        }
        if self.off_share >= self.on_share {
            return Err(format!(
                "the clear share ({}) must be below the onset share ({}), or conditions would flap",
                self.off_share, self.on_share
            ));
        }
        if !(self.min_evidence_s.is_finite() && self.min_evidence_s >= 0.0) {
            return Err("the minimum evidence must be a finite number of seconds >= 0".into());
        }
        Ok(())
    }
}

/// What one delivered window says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Vote {
    Class {
        index: usize,
        uncertain: bool,
    },
    /// The model could not judge the window's signal.
    Invalid,
    /// The server was overloaded: no vote.
    Shed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The window's first and last samples, in the client's sample indices.
    pub first_sample: u64,
    pub end_sample: u64,
    pub vote: Vote,
    pub velocity_mm_s: Option<f32>,
}

/// A sensor's whole condition state: what a resumed stream carries to the next stream (on any replica) so its
/// condition goes on as if the stream had never moved.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub condition: Condition,
    /// The dominant fault class while in FAULT.
    pub fault_class: Option<usize>,
    /// Decayed votes per class, in the card's class order, in seconds of signal (a window votes with the signal it
    /// adds to the last one, so overlapping windows count their signal once, whatever the hop).
    pub evidence: Vec<f32>,
    /// Decayed signal the model could not judge, in seconds.
    pub invalid: f32,
    /// Decayed sum of squared velocity and of its weights (their ratio is the sustained mean square).
    pub velocity_energy: f32,
    pub velocity_weight: f32,
    /// The worst sustained zone since the condition began.
    pub worst_zone: Option<Zone>,
    /// Where the current condition began: the sample index and the wall clock (Unix ms).
    pub since_sample: u64,
    pub since_unix_ms: i64,
    /// Windows delivered since the condition began.
    pub windows: u64,
    pub last_sample: Option<u64>,
    /// A condition (with its class) that has held since a sample, waiting for its delay.
    pub pending: Option<(Condition, Option<usize>, u64)>,
}

impl State {
    pub fn new(classes: usize, now_unix_ms: i64) -> Self {
        Self {
            condition: Condition::Unknown,
            fault_class: None,
            evidence: vec![0.0; classes],
            invalid: 0.0,
            velocity_energy: 0.0,
            velocity_weight: 0.0,
            worst_zone: None,
            since_sample: 0,
            since_unix_ms: now_unix_ms,
            windows: 0,
            last_sample: None,
            pending: None,
        }
    }

    /// Checks a state a client sent back: the model's class count, finite non-negative evidence, a class in range.
    pub fn check(&self, classes: usize) -> Result<(), String> {
        if self.evidence.len() != classes {
            return Err(format!(
                "it has {} classes and the model being served has {classes}",
                self.evidence.len()
            ));
        }
        let numbers = self.evidence.iter().chain([
            &self.invalid,
            &self.velocity_energy,
            &self.velocity_weight,
        ]);
        // The bounds the debouncer itself keeps (the squared velocity is clamped; evidence is seconds of decayed
        // signal), so a stream's own carry always passes.
        let bound = MAX_VELOCITY * MAX_VELOCITY * 1e6;
        if numbers
            .clone()
            .any(|x| !(x.is_finite() && *x >= 0.0 && *x <= bound))
        {
            return Err("its evidence is not finite, negative or absurdly large".into());
        }
        let class_ok = |c: Option<usize>| c.is_none_or(|c| c < classes);
        if !class_ok(self.fault_class) || !class_ok(self.pending.and_then(|p| p.1)) {
            return Err(format!("it names a class outside the model's {classes}"));
        }
        if (self.condition == Condition::Fault) != self.fault_class.is_some() {
            return Err("a FAULT carries its class, and only a FAULT does".into());
        }
        Ok(())
    }
}

/// Why a condition event was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The condition itself changed.
    Condition,
    /// Still FAULT, another fault class now dominates.
    Class,
    /// Still the same condition, its worst sustained zone rose.
    Zone,
}

/// A sensor's condition as reported: in events, the watch, the list and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub condition: Condition,
    pub fault_class: Option<usize>,
    /// Each class's share of the judged evidence, in the card's class order (zeros without evidence).
    pub shares: Vec<f32>,
    /// Evidence behind it, in seconds of (decayed) signal, judged or not.
    pub evidence_s: f32,
    /// Windows delivered since the condition began.
    pub windows: u64,
    pub since_sample: u64,
    pub since_unix_ms: i64,
    /// Sustained RMS velocity, mm/s, and its zone; the worst sustained zone since the condition began.
    pub velocity_mm_s: Option<f32>,
    pub zone: Option<Zone>,
    pub worst_zone: Option<Zone>,
}

impl Snapshot {
    /// For people: "faulty, most likely inner_race_007 (62%), else outer_race_014 (21%)".
    pub fn summary(&self, classes: &[String]) -> String {
        let name = |i: usize| classes.get(i).map_or("?", String::as_str);
        let pct = |i: usize| self.shares.get(i).map_or(0.0, |s| s * 100.0);
        match self.condition {
            Condition::Fault => {
                let Some(top) = self.fault_class else {
                    return "faulty".into();
                };
                let mut text = format!("faulty, most likely {} ({:.0}%)", name(top), pct(top));
                let runner_up = (0..self.shares.len())
                    .filter(|i| *i != top && self.shares[*i] >= 0.05 && !is_healthy(name(*i)))
                    .max_by(|a, b| self.shares[*a].total_cmp(&self.shares[*b]));
                if let Some(r) = runner_up {
                    text += &format!(", else {} ({:.0}%)", name(r), pct(r));
                }
                text
            }
            Condition::Normal => "normal".into(),
            Condition::SensorFault => {
                "most windows could not be judged (flat, clipped, out of range or impulsive): check the sensor".into()
            }
            Condition::Unknown => format!("not enough evidence ({:.1} s of signal)", self.evidence_s),
        }
    }
}

fn is_healthy(class: &str) -> bool {
    matches!(class.to_ascii_lowercase().as_str(), "normal" | "healthy")
}

/// The index of the class meaning healthy (named `normal` or `healthy`).
pub fn healthy_class(classes: &[String]) -> Option<usize> {
    classes.iter().position(|c| is_healthy(c))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub from: Condition,
    pub reason: Reason,
    pub now: Snapshot,
}

pub struct Debouncer {
    settings: Settings,
    /// The class that means healthy; without one the stage can only say UNKNOWN or SENSOR_FAULT.
    normal: Option<usize>,
    /// The client's sample rate: sample indices to seconds.
    rate_hz: f64,
    zones: ZoneLimits,
    state: State,
}

impl Debouncer {
    pub fn new(
        settings: Settings,
        normal: Option<usize>,
        rate_hz: f64,
        zones: ZoneLimits,
        state: State,
    ) -> Self {
        Self {
            settings,
            normal,
            rate_hz,
            zones,
            state,
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes one delivered window; returns the change it causes, if any.
    pub fn observe(&mut self, obs: Observation, now_unix_ms: i64) -> Option<Change> {
        let new_signal = self.decay_to(obs.first_sample, obs.end_sample, obs.vote == Vote::Shed);
        let s = &mut self.state;
        s.windows = s.windows.saturating_add(1);
        match obs.vote {
            Vote::Class { index, uncertain } => {
                if let Some(e) = s.evidence.get_mut(index) {
                    let weight = if uncertain {
                        self.settings.uncertain_weight
                    } else {
                        1.0
                    };
                    *e += weight * new_signal;
                }
            }
            Vote::Invalid => s.invalid += new_signal,
            Vote::Shed => {}
        }
        // A velocity beyond any machine's (10 m/s) is a unit mistake: clamped, so the sustained mean stays finite.
        if let Some(v) = obs.velocity_mm_s.filter(|v| v.is_finite()) {
            let v = v.clamp(0.0, MAX_VELOCITY);
            s.velocity_energy += v * v;
            s.velocity_weight += 1.0;
        }
        let (candidate, class) = self.candidate();
        let t = obs.end_sample;
        let from = self.state.condition;
        if candidate != from {
            let delay = if candidate.is_alarm() || !from.is_alarm() {
                self.settings.on_delay_s
            } else {
                self.settings.off_delay_s
            };
            // The delay runs while the condition holds, whichever fault class leads meanwhile.
            if self.held(candidate, None, t, delay) {
                self.enter(candidate, class, t, now_unix_ms);
                return Some(self.change(from, Reason::Condition));
            }
            return self.zone_rise(from);
        }
        if candidate == Condition::Fault && class != self.state.fault_class {
            if self.held(candidate, class, t, self.settings.on_delay_s) {
                self.state.fault_class = class;
                self.state.pending = None;
                return Some(self.change(from, Reason::Class));
            }
        } else {
            self.state.pending = None;
        }
        self.zone_rise(from)
    }

    pub fn snapshot(&self) -> Snapshot {
        let s = &self.state;
        let judged: f32 = s.evidence.iter().sum();
        let shares = s
            .evidence
            .iter()
            .map(|e| if judged > 0.0 { e / judged } else { 0.0 })
            .collect();
        let velocity = self.sustained_velocity();
        Snapshot {
            condition: s.condition,
            fault_class: s.fault_class,
            shares,
            evidence_s: judged + s.invalid,
            windows: s.windows,
            since_sample: s.since_sample,
            since_unix_ms: s.since_unix_ms,
            velocity_mm_s: velocity,
            zone: velocity.map(|v| self.zones.zone(v)),
            worst_zone: s.worst_zone,
        }
    }

    fn sustained_velocity(&self) -> Option<f32> {
        let s = &self.state;
        (s.velocity_weight > 1e-6).then(|| (s.velocity_energy / s.velocity_weight).sqrt())
    }

    /// Evidence fades with the signal between the last window's end and this one's (a gap fades it further);
    /// returns the seconds of signal this window adds: what it does not share with the last one. A window that
    /// ends at or before the last one (the sensor's counter restarted) starts a new segment: nothing fades, the
    /// window counts whole, and a pending change starts over. A shed window moves the clock without fading: the
    /// server's overload is no evidence against the machine.
    fn decay_to(&mut self, first: u64, end: u64, shed: bool) -> f32 {
        let whole = (end.saturating_sub(first) + 1) as f64 / self.rate_hz;
        let s = &mut self.state;
        if s.last_sample.is_some_and(|last| end <= last) {
            s.last_sample = None;
            s.pending = None;
        }
        let mut new_signal = whole;
        if shed {
            s.last_sample = Some(end);
            return 0.0;
        }
        if let Some(last) = s.last_sample {
            let dt = end.saturating_sub(last) as f64 / self.rate_hz;
            new_signal = dt.min(whole);
            let k = 0.5f64.powf(dt / self.settings.half_life_s) as f32;
            s.evidence.iter_mut().for_each(|e| *e *= k);
            s.invalid *= k;
            s.velocity_energy *= k;
            s.velocity_weight *= k;
        }
        s.last_sample = Some(end);
        new_signal as f32
    }

    /// What the evidence says now, before any delay: the condition and, for FAULT, the dominant fault class.
    fn candidate(&self) -> (Condition, Option<usize>) {
        let s = &self.state;
        let set = &self.settings;
        let judged: f32 = s.evidence.iter().sum();
        let total = judged + s.invalid;
        if total < set.min_evidence_s.max(1e-6) {
            return (Condition::Unknown, None);
        }
        if s.invalid / total >= set.sensor_fault_share {
            return (Condition::SensorFault, None);
        }
        let Some(normal) = self.normal else {
            return (Condition::Unknown, None);
        };
        if judged < set.min_evidence_s.max(1e-6) {
            return (Condition::Unknown, None);
        }
        let fault_share = 1.0 - s.evidence.get(normal).copied().unwrap_or(0.0) / judged;
        let dominant = s
            .evidence
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != normal)
            .fold(None, |best: Option<(usize, f32)>, (i, e)| match best {
                Some((_, b)) if b >= *e => best,
                _ => Some((i, *e)),
            })
            .map(|(i, _)| i);
        let current = s.condition;
        if fault_share >= set.on_share
            || (current == Condition::Fault && fault_share > set.off_share)
        {
            (Condition::Fault, dominant)
        } else if fault_share <= set.off_share || current == Condition::Normal {
            (Condition::Normal, None)
        } else {
            // Between the two shares, neither FAULT nor NORMAL has been earned yet.
            (Condition::Unknown, None)
        }
    }

    /// Whether `candidate` has held for `delay` seconds of signal up to sample `t` (starting its clock if new).
    fn held(&mut self, candidate: Condition, class: Option<usize>, t: u64, delay: f64) -> bool {
        match self.state.pending {
            Some((c, k, since)) if c == candidate && k == class => {
                t.saturating_sub(since) as f64 / self.rate_hz >= delay
            }
            _ => {
                self.state.pending = Some((candidate, class, t));
                delay <= 0.0
            }
        }
    }

    fn enter(&mut self, to: Condition, class: Option<usize>, t: u64, now_unix_ms: i64) {
        let s = &mut self.state;
        // The condition began where the evidence for it started to hold, not where its delay ran out.
        s.since_sample = s.pending.map_or(t, |p| p.2);
        s.since_unix_ms = now_unix_ms;
        s.condition = to;
        s.fault_class = class.filter(|_| to == Condition::Fault);
        s.pending = None;
        s.windows = 0;
        s.worst_zone = None;
        let zone = self.sustained_velocity().map(|v| self.zones.zone(v));
        self.state.worst_zone = zone;
    }

    fn zone_rise(&mut self, from: Condition) -> Option<Change> {
        let zone = self.sustained_velocity().map(|v| self.zones.zone(v))?;
        let worst = self.state.worst_zone;
        if worst.is_some_and(|w| w >= zone) {
            return None;
        }
        self.state.worst_zone = Some(zone);
        // The first zone of a condition is news only when something watches zones of an alarm.
        (worst.is_some() && from.is_alarm()).then(|| self.change(from, Reason::Zone))
    }

    fn change(&self, from: Condition, reason: Reason) -> Change {
        Change {
            from,
            reason,
            now: self.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: f64 = 12_000.0;
    const HOP: u64 = 4096;
    const CLASSES: usize = 4; // 0 normal, 1..3 faults

    fn debouncer(settings: Settings) -> Debouncer {
        Debouncer::new(
            settings,
            Some(0),
            RATE,
            ZoneLimits::default(),
            State::new(CLASSES, 0),
        )
    }

    /// Feeds `votes`, one window per hop after `start`; returns the changes with the window index they came at.
    fn feed(d: &mut Debouncer, start: u64, votes: &[Vote]) -> Vec<(usize, Change)> {
        votes
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let obs = Observation {
                    first_sample: start + i as u64 * HOP,
                    end_sample: start + (i as u64 + 2) * HOP - 1,
                    vote: *v,
                    velocity_mm_s: Some(1.0),
                };
                d.observe(obs, 0).map(|c| (i, c))
            })
            .collect()
    }

    fn class(index: usize) -> Vote {
        Vote::Class {
            index,
            uncertain: false,
        }
    }

    #[test]
    fn a_fault_is_said_after_its_delay_of_signal_and_names_the_dominant_class() {
        let mut d = debouncer(Settings::default());
        let changes = feed(&mut d, 0, &[class(2); 30]);
        let conditions: Vec<_> = changes.iter().map(|(_, c)| c.now.condition).collect();
        assert_eq!(
            conditions,
            [Condition::Fault],
            "one onset, no flapping: {changes:?}"
        );
        let (at, onset) = &changes[0];
        assert_eq!(onset.from, Condition::Unknown);
        assert_eq!(onset.now.fault_class, Some(2));
        assert!(onset.now.shares[2] > 0.99);
        // 1 s of evidence (the first window's 0.68 s and one hop's 0.34 s), then 2 s of signal: never sooner.
        let seconds = (*at as u64 * HOP) as f64 / RATE;
        assert!((2.0..3.5).contains(&seconds), "onset after {seconds} s");
    }

    #[test]
    fn the_same_signal_at_another_hop_gives_the_onset_at_the_same_signal_time() {
        let onset_seconds = |hop: u64| {
            let mut d = debouncer(Settings::default());
            (0..200u64)
                .find_map(|i| {
                    let obs = Observation {
                        first_sample: i * hop,
                        end_sample: 8191 + i * hop,
                        vote: class(1),
                        velocity_mm_s: None,
                    };
                    d.observe(obs, 0).map(|_| (8191 + i * hop) as f64 / RATE)
                })
                .unwrap()
        };
        let (a, b) = (onset_seconds(4096), onset_seconds(1024));
        assert!((a - b).abs() < 0.35, "hop 4096: {a} s, hop 1024: {b} s");
    }

    #[test]
    fn hysteresis_keeps_a_fault_through_a_few_normal_windows_and_clears_after_its_delay() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(1); 30]);
        assert_eq!(d.state().condition, Condition::Fault);
        let mut mixed = vec![class(1); 20];
        for i in (0..20).step_by(3) {
            mixed[i] = class(0);
        }
        assert!(
            feed(&mut d, 30 * HOP, &mixed).is_empty(),
            "one normal window in three is still a fault"
        );
        let clear = feed(&mut d, 50 * HOP, &[class(0); 60]);
        assert_eq!(clear.len(), 1, "{clear:?}");
        assert_eq!(
            (clear[0].1.from, clear[0].1.now.condition),
            (Condition::Fault, Condition::Normal)
        );
        let seconds = (clear[0].0 as u64 * HOP) as f64 / RATE;
        assert!(
            seconds >= Settings::default().off_delay_s,
            "cleared after {seconds} s"
        );
    }

    #[test]
    fn uncertain_windows_weigh_less_and_shed_windows_do_not_vote() {
        let settings = Settings::default();
        let mut d = debouncer(settings);
        feed(&mut d, 0, &[class(0); 30]);
        assert_eq!(d.state().condition, Condition::Normal);
        let unsure = Vote::Class {
            index: 3,
            uncertain: true,
        };
        // As many uncertain fault votes as sure normal ones: 1/3 of the weight, below the onset share.
        let alternating: Vec<_> = (0..40)
            .map(|i| if i % 2 == 0 { unsure } else { class(0) })
            .collect();
        assert!(feed(&mut d, 30 * HOP, &alternating).is_empty());
        let before = d.snapshot();
        feed(&mut d, 70 * HOP, &[Vote::Shed; 3]);
        let after = d.snapshot();
        let moved = before
            .shares
            .iter()
            .zip(&after.shares)
            .map(|(a, b)| (a - b).abs());
        assert!(
            moved.fold(0f32, f32::max) < 1e-6,
            "shed windows move no share: {before:?} {after:?}"
        );
        assert_eq!(
            after.evidence_s, before.evidence_s,
            "nor fade it: the server's overload is no evidence against the machine"
        );
    }

    #[test]
    fn windows_the_model_cannot_judge_are_a_sensor_fault_never_normal() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(0); 20]);
        let changes = feed(&mut d, 20 * HOP, &[Vote::Invalid; 30]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1.now.condition, Condition::SensorFault);
    }

    #[test]
    fn a_new_dominant_class_is_reported_once_it_holds() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(1); 30]);
        let changes = feed(&mut d, 30 * HOP, &[class(3); 40]);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1.reason, Reason::Class);
        assert_eq!(changes[0].1.now.fault_class, Some(3));
    }

    #[test]
    fn a_gap_in_the_signal_fades_the_evidence_to_unknown() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(0); 30]);
        // One window two minutes of signal later: the old evidence is gone, one window is not enough.
        let later = feed(&mut d, 30 * HOP + 120 * 12_000, &[class(0); 1]);
        assert!(later.is_empty(), "a single window does not decide");
        assert!(d.snapshot().evidence_s < Settings::default().min_evidence_s);
    }

    #[test]
    fn a_carried_state_goes_on_without_a_new_onset() {
        let mut a = debouncer(Settings::default());
        feed(&mut a, 0, &[class(2); 30]);
        let carried = a.state().clone();
        carried.check(CLASSES).unwrap();
        let mut b = Debouncer::new(
            Settings::default(),
            Some(0),
            RATE,
            ZoneLimits::default(),
            carried,
        );
        assert!(feed(&mut b, 30 * HOP, &[class(2); 30]).is_empty());
        assert_eq!(b.state().condition, Condition::Fault);
        let mut bad = a.state().clone();
        bad.evidence.push(f32::NAN);
        assert!(bad.check(CLASSES).is_err());
        let mut wrong = a.state().clone();
        wrong.fault_class = Some(9);
        assert!(wrong.check(CLASSES).is_err());
    }

    #[test]
    fn a_sustained_rise_in_velocity_raises_the_zone_of_a_fault() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(1); 30]);
        assert_eq!(d.snapshot().worst_zone, Some(Zone::A));
        let rises: Vec<_> = (0..40u64)
            .filter_map(|i| {
                let obs = Observation {
                    first_sample: (29 + i) * HOP,
                    end_sample: (31 + i) * HOP,
                    vote: class(1),
                    velocity_mm_s: Some(6.0),
                };
                d.observe(obs, 0)
            })
            .collect();
        assert!(rises.iter().all(|c| c.reason == Reason::Zone), "{rises:?}");
        assert_eq!(d.snapshot().worst_zone, Some(Zone::D));
        assert_eq!(d.state().condition, Condition::Fault);
    }

    #[test]
    fn a_fault_whose_leading_class_flips_every_window_is_still_said() {
        let mut d = debouncer(Settings::default());
        let flipping: Vec<_> = (0..30).map(|i| class(1 + i % 2)).collect();
        let changes = feed(&mut d, 0, &flipping);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1.now.condition, Condition::Fault);
        assert!(changes[0].1.now.fault_class.is_some());
    }

    #[test]
    fn a_counter_that_restarts_is_a_new_segment_not_a_frozen_sensor() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 1_000_000, &[class(1); 30]);
        assert_eq!(d.state().condition, Condition::Fault);
        // The gateway's counter restarts at 0 and the machine is healthy now: the fault clears as it would have.
        let clear = feed(&mut d, 0, &[class(0); 60]);
        assert_eq!(
            clear.last().map(|c| c.1.now.condition),
            Some(Condition::Normal),
            "{clear:?}"
        );
    }

    #[test]
    fn shed_windows_do_not_make_a_machine_unknown() {
        let mut d = debouncer(Settings::default());
        feed(&mut d, 0, &[class(0); 30]);
        assert_eq!(d.state().condition, Condition::Normal);
        // The server sheds every other window for a while: no vote, no fading, no flap.
        let overloaded: Vec<_> = (0..60)
            .map(|i| if i % 2 == 0 { Vote::Shed } else { class(0) })
            .collect();
        assert!(feed(&mut d, 30 * HOP, &overloaded).is_empty());
        assert!(
            feed(&mut d, 90 * HOP, &[Vote::Shed; 20]).is_empty(),
            "a burst of shedding"
        );
        assert_eq!(d.state().condition, Condition::Normal);
    }

    #[test]
    fn the_state_a_stream_carries_always_passes_its_own_check() {
        let mut d = debouncer(Settings {
            half_life_s: 60.0,
            ..Settings::default()
        });
        for i in 0..5000u64 {
            let obs = Observation {
                first_sample: i * 64,
                end_sample: i * 64 + 8191,
                vote: class(1),
                velocity_mm_s: Some(if i % 2 == 0 { 250.0 } else { 1e30 }),
            };
            d.observe(obs, 0);
        }
        d.state().check(CLASSES).unwrap();
    }

    #[test]
    fn settings_that_would_flap_are_refused() {
        let mut s = Settings::default();
        assert!(s.validate().is_ok());
        s.off_share = s.on_share;
        assert!(s.validate().unwrap_err().contains("flap"));
    }
}
