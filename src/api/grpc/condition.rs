//! Conditions and machines into drsn.v1 messages and back: condition events, the carry a resumed stream sends
//! back (checked before use), machine lists and watch events.

use crate::api::grpc::proto::{self, ClassShare, ConditionCarry, ConditionReason, VibrationZone};
use crate::condition::debounce::{Change, Condition, Reason, Snapshot, State};
use crate::condition::machines::{MachineChange, MachineView, Revision, SensorView};
use crate::error::ServeError;
use crate::pipeline::severity::Zone;

pub(crate) fn condition(c: Condition) -> proto::Condition {
    match c {
        Condition::Normal => proto::Condition::Normal,
        Condition::Fault => proto::Condition::Fault,
        Condition::SensorFault => proto::Condition::SensorFault,
        Condition::Unknown => proto::Condition::Unknown,
    }
}

fn condition_from(value: i32) -> Result<Condition, ServeError> {
    match proto::Condition::try_from(value) {
        Ok(proto::Condition::Normal) => Ok(Condition::Normal),
        Ok(proto::Condition::Fault) => Ok(Condition::Fault),
        Ok(proto::Condition::SensorFault) => Ok(Condition::SensorFault),
        Ok(proto::Condition::Unknown) => Ok(Condition::Unknown),
        _ => Err(ServeError::ConditionCarry(format!(
            "condition {value} is not a condition"
        ))),
    }
}

pub(crate) fn zone(z: Option<Zone>) -> VibrationZone {
    match z {
        None => VibrationZone::Unspecified,
        Some(Zone::A) => VibrationZone::A,
        Some(Zone::B) => VibrationZone::B,
        Some(Zone::C) => VibrationZone::C,
        Some(Zone::D) => VibrationZone::D,
    }
}

fn zone_from(value: i32) -> Result<Option<Zone>, ServeError> {
    match VibrationZone::try_from(value) {
        Ok(VibrationZone::Unspecified) => Ok(None),
        Ok(VibrationZone::A) => Ok(Some(Zone::A)),
        Ok(VibrationZone::B) => Ok(Some(Zone::B)),
        Ok(VibrationZone::C) => Ok(Some(Zone::C)),
        Ok(VibrationZone::D) => Ok(Some(Zone::D)),
        Err(_) => Err(ServeError::ConditionCarry(format!(
            "zone {value} is not a zone"
        ))),
    }
}

fn shares(s: &Snapshot, classes: &[String]) -> Vec<ClassShare> {
    classes
        .iter()
        .zip(&s.shares)
        .map(|(label, share)| ClassShare {
            label: label.clone(),
            share: *share,
        })
        .collect()
}

fn class_name(c: Option<usize>, classes: &[String]) -> String {
    c.and_then(|c| classes.get(c).cloned()).unwrap_or_default()
}

/// A sensor's condition as an event (or the condition a stream opens in, with `change` absent).
pub(crate) fn sensor_condition(
    ids: (&str, &str),
    now: &Snapshot,
    change: Option<(&Change, &State)>,
    classes: &[String],
) -> proto::SensorCondition {
    let (previous, reason, carry) = match change {
        Some((c, state)) => (c.from, reason(c.reason), Some(carry(state))),
        None => (now.condition, ConditionReason::Unspecified, None),
    };
    proto::SensorCondition {
        machine_id: ids.0.to_owned(),
        sensor_id: ids.1.to_owned(),
        condition: condition(now.condition) as i32,
        previous: condition(previous) as i32,
        reason: reason as i32,
        fault_class: class_name(now.fault_class, classes),
        shares: shares(now, classes),
        evidence_seconds: now.evidence_s,
        windows: now.windows,
        since_sample: now.since_sample,
        since_unix_ms: now.since_unix_ms,
        velocity_rms_mm_s: now.velocity_mm_s,
        zone: zone(now.zone) as i32,
        worst_zone: zone(now.worst_zone) as i32,
        summary: now.summary(classes),
        carry,
    }
}

fn reason(r: Reason) -> ConditionReason {
    match r {
        Reason::Condition => ConditionReason::Condition,
        Reason::Class => ConditionReason::Class,
        Reason::Zone => ConditionReason::Zone,
    }
}

pub(crate) fn carry(s: &State) -> ConditionCarry {
    let (pending, pending_class, pending_since) = match s.pending {
        Some((c, k, since)) => (condition(c), k.map(|k| k as u32), since),
        None => (proto::Condition::Unspecified, None, 0),
    };
    ConditionCarry {
        condition: condition(s.condition) as i32,
        fault_class: s.fault_class.map(|c| c as u32),
        evidence: s.evidence.clone(),
        invalid: s.invalid,
        velocity_energy: s.velocity_energy,
        velocity_weight: s.velocity_weight,
        worst_zone: zone(s.worst_zone) as i32,
        since_sample: s.since_sample,
        since_unix_ms: s.since_unix_ms,
        windows: s.windows,
        last_sample: s.last_sample,
        pending: pending as i32,
        pending_class,
        pending_since,
    }
}

/// The state a resumed stream sent back; the condition stage checks it against the model.
pub(crate) fn carry_from(c: ConditionCarry) -> Result<State, ServeError> {
    let pending = match c.pending {
        0 => None,
        p => Some((
            condition_from(p)?,
            c.pending_class.map(|k| k as usize),
            c.pending_since,
        )),
    };
    Ok(State {
        condition: condition_from(c.condition)?,
        fault_class: c.fault_class.map(|k| k as usize),
        evidence: c.evidence,
        invalid: c.invalid,
        velocity_energy: c.velocity_energy,
        velocity_weight: c.velocity_weight,
        worst_zone: zone_from(c.worst_zone)?,
        since_sample: c.since_sample,
        since_unix_ms: c.since_unix_ms,
        windows: c.windows,
        last_sample: c.last_sample,
        pending,
    })
}

fn sensor(v: &SensorView) -> proto::SensorState {
    let (s, classes) = (&v.snapshot, v.classes.as_slice());
    proto::SensorState {
        sensor_id: v.sensor_id.clone(),
        condition: condition(s.condition) as i32,
        fault_class: class_name(s.fault_class, classes),
        shares: shares(s, classes),
        evidence_seconds: s.evidence_s,
        since_sample: s.since_sample,
        since_unix_ms: s.since_unix_ms,
        velocity_rms_mm_s: s.velocity_mm_s,
        zone: zone(s.zone) as i32,
        worst_zone: zone(s.worst_zone) as i32,
        streaming: v.streaming,
    }
}

pub(crate) fn machine(v: &MachineView) -> proto::MachineCondition {
    proto::MachineCondition {
        machine_id: v.machine_id.clone(),
        condition: condition(v.condition) as i32,
        sensor_id: v.sensor_id.clone(),
        fault_class: v.fault_class.clone().unwrap_or_default(),
        zone: zone(v.zone) as i32,
        velocity_rms_mm_s: v.velocity_mm_s,
        since_unix_ms: v.since_unix_ms,
        sensors: v.sensors.iter().map(sensor).collect(),
    }
}

pub(crate) fn list(revision: u64, machines: &[MachineView]) -> proto::ListMachinesResponse {
    proto::ListMachinesResponse {
        revision,
        machines: machines.iter().map(machine).collect(),
    }
}

pub(crate) fn watch_event(r: &Revision) -> proto::MachineEvent {
    use proto::machine_event::Event;
    let event = match &r.change {
        MachineChange::Changed(v) => Event::Changed(machine(v)),
        MachineChange::Removed(id) => Event::Removed(id.clone()),
    };
    proto::MachineEvent {
        revision: r.revision,
        event: Some(event),
    }
}

pub(crate) fn snapshot_event(revision: u64, machines: &[MachineView]) -> proto::MachineEvent {
    proto::MachineEvent {
        revision,
        event: Some(proto::machine_event::Event::Snapshot(list(
            revision, machines,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carry_survives_the_wire_and_a_bad_one_is_refused_by_name() {
        let state = State {
            condition: Condition::Fault,
            fault_class: Some(3),
            evidence: vec![0.1, 0.0, 0.0, 2.5],
            invalid: 0.2,
            velocity_energy: 4.0,
            velocity_weight: 2.0,
            worst_zone: Some(Zone::C),
            since_sample: 40_960,
            since_unix_ms: 1_700_000_000_000,
            windows: 12,
            last_sample: Some(90_111),
            pending: Some((Condition::Normal, None, 81_919)),
        };
        assert_eq!(carry_from(carry(&state)).unwrap(), state);
        let mut bad = carry(&state);
        bad.condition = 42;
        let e = carry_from(bad).unwrap_err().to_string();
        assert!(e.contains("resume_condition") && e.contains("42"), "{e}");
    }
}
