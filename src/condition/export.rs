//! The per-machine Prometheus series (`--machine-metrics`), rendered from the registry at each scrape so that a
//! machine that leaves this replica leaves `/metrics` with it: capped, the worst conditions first.

use std::fmt::Write;
use std::sync::Arc;

use metrics::gauge;

use crate::condition::debounce::Condition;
use crate::condition::machines::{MachineView, Registry};
use crate::telemetry::metrics as m;

/// The per-machine series as `/metrics` appends them at each scrape, at most `cap` machines.
pub(crate) fn series(registry: Arc<Registry>, cap: usize) -> m::Extra {
    Arc::new(move |out: &mut String| render(&registry, cap, out))
}

/// Appends the per-machine series of at most `cap` machines (worst condition first) to `out`.
pub(crate) fn render(registry: &Registry, cap: usize, out: &mut String) {
    let (_, mut machines) = registry.list();
    machines.sort_by(|a, b| {
        b.condition
            .cmp(&a.condition)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
    });
    let left_out = machines.len().saturating_sub(cap);
    gauge!(m::MACHINES_NOT_EXPORTED).set(left_out as f64);
    machines.truncate(cap);
    header(
        out,
        m::MACHINE_CONDITION,
        "1 for the machine's current condition, 0 for the others.",
    );
    for v in &machines {
        for c in Condition::ALL {
            let value = u8::from(v.condition == c);
            let _ = writeln!(
                out,
                "{}{{machine_id=\"{}\",condition=\"{}\"}} {value}",
                m::MACHINE_CONDITION,
                esc(&v.machine_id),
                c.label()
            );
        }
    }
    header(
        out,
        m::MACHINE_INFO,
        "1, labelled with the machine's condition, the sensor setting it, its fault class and worst sustained ISO zone.",
    );
    for v in &machines {
        let _ = writeln!(
            out,
            "{}{{machine_id=\"{}\",condition=\"{}\",sensor_id=\"{}\",class=\"{}\",zone=\"{}\"}} 1",
            m::MACHINE_INFO,
            esc(&v.machine_id),
            v.condition.label(),
            esc(&v.sensor_id),
            esc(v.fault_class.as_deref().unwrap_or("")),
            v.zone.map_or("", |z| z.name()),
        );
    }
    header(
        out,
        m::MACHINE_CLASS_SHARE,
        "Each class's share of the current evidence of the sensor setting the machine's condition.",
    );
    for v in &machines {
        let Some(s) = setting_sensor(v) else {
            continue;
        };
        for (class, share) in s.classes.iter().zip(&s.snapshot.shares) {
            let _ = writeln!(
                out,
                "{}{{machine_id=\"{}\",class=\"{}\"}} {share}",
                m::MACHINE_CLASS_SHARE,
                esc(&v.machine_id),
                esc(class)
            );
        }
    }
    header(
        out,
        m::MACHINE_VELOCITY,
        "Sustained RMS vibration velocity, mm/s over 10-1000 Hz, of the machine's loudest sensor.",
    );
    for v in &machines {
        if let Some(velocity) = v.velocity_mm_s {
            let _ = writeln!(
                out,
                "{}{{machine_id=\"{}\"}} {velocity}",
                m::MACHINE_VELOCITY,
                esc(&v.machine_id)
            );
        }
    }
    header(
        out,
        m::MACHINE_SINCE,
        "Unix time at which the machine's current condition began.",
    );
    for v in &machines {
        let _ = writeln!(
            out,
            "{}{{machine_id=\"{}\"}} {}",
            m::MACHINE_SINCE,
            esc(&v.machine_id),
            v.since_unix_ms as f64 / 1000.0
        );
    }
}

fn setting_sensor(v: &MachineView) -> Option<&crate::condition::machines::SensorView> {
    v.sensors.iter().find(|s| s.sensor_id == v.sensor_id)
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Label values escaped as the text format wants (ids are already free of control characters).
fn esc(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::condition::debounce::Snapshot;
    use crate::pipeline::severity::Zone;

    fn snapshot(condition: Condition, fault_class: Option<usize>) -> Snapshot {
        Snapshot {
            condition,
            fault_class,
            shares: vec![0.25, 0.75],
            evidence_s: 2.0,
            windows: 5,
            since_sample: 0,
            since_unix_ms: 1_700_000_000_500,
            velocity_mm_s: Some(3.5),
            zone: Some(Zone::C),
            worst_zone: Some(Zone::C),
        }
    }

    #[tokio::test]
    async fn the_worst_machines_are_exported_first_up_to_the_cap() {
        let r = Registry::new(Duration::from_secs(1), 16);
        let classes = Arc::new(vec!["normal".into(), "outer".into()]);
        let _a = r.attach(
            "a-healthy",
            "s",
            classes.clone(),
            snapshot(Condition::Normal, None),
        );
        let _b = r.attach(
            "b \"quoted\"",
            "DE",
            classes,
            snapshot(Condition::Fault, Some(1)),
        );
        let mut out = String::new();
        render(&r, 1, &mut out);
        assert!(out.contains(r#"drsn_machine_info{machine_id="b \"quoted\"",condition="fault",sensor_id="DE",class="outer",zone="C"} 1"#), "{out}");
        assert!(
            out.contains(
                r#"drsn_machine_condition{machine_id="b \"quoted\"",condition="fault"} 1"#
            )
        );
        assert!(
            out.contains(
                r#"drsn_machine_class_share{machine_id="b \"quoted\"",class="outer"} 0.75"#
            )
        );
        assert!(out.contains(r#"drsn_machine_condition_since_timestamp_seconds{machine_id="b \"quoted\""} 1700000000.5"#));
        assert!(
            !out.contains("a-healthy"),
            "over the cap, the healthy machine is left out"
        );
    }
}
