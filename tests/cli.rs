//! The `drsn-serve` binary as a user runs it: `serve`, then `replay` of a real CWRU recording in JSON lines.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::process::Command;

/// A replay's `--json` output: it succeeded, and every line is JSON.
fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_prints_every_window_and_a_summary() {
    let bin = env!("CARGO_BIN_EXE_drsn-serve");
    let server = common::ServerProcess::spawn(&[]);
    let grpc = server.addr.clone();
    let file = format!(
        "{}/models/training/tests/fixtures/cwru_mini/0HP/12k_Drive_End_OR014@6_0_197.mat",
        common::ROOT
    );
    let out = Command::new(bin)
        .args(["replay", "--json", "--hop", "512", "--addr", &grpc, &file])
        .output()
        .unwrap();
    drop(server);
    let lines = json_lines(&out);
    let (summary, windows) = lines.split_last().unwrap();
    // The committed excerpt at hop 512.
    let n = common::windows_in(16_384, common::window(), 512);
    assert_eq!(windows.len(), n);
    for (k, w) in windows.iter().enumerate() {
        assert_eq!(w["window"], k);
        assert_eq!(w["first_sample"], k * 512);
        assert_eq!(w["label"], "outer_race_014");
    }
    assert_eq!(summary["summary"]["windows"], n);
    assert_eq!(summary["summary"]["classes"]["outer_race_014"], n);
    assert_eq!(summary["summary"]["failed_streams"], 0);

    // A file the reader cannot take is a clear error, not a crash.
    let out = Command::new(bin)
        .args(["replay", "--addr", &grpc, "nope.txt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".mat") && err.contains(".wav"), "{err}");
}

#[test]
fn replay_names_each_recording_a_machine_and_prints_its_conditions() {
    let bin = env!("CARGO_BIN_EXE_drsn-serve");
    let server = common::ServerProcess::spawn(&[]);
    let dir = std::env::temp_dir().join(format!("drsn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 10 s of the committed outer-race excerpt, end to end, as a gateway's .npy recording.
    let (_, excerpt) = common::recordings()
        .into_iter()
        .find(|(l, _)| l == "outer_race_014")
        .unwrap();
    let tiled: Vec<f32> = (0..120_000).map(|i| excerpt[i % excerpt.len()]).collect();
    let file = dir.join("press-4_de.npy");
    ndarray_npy::write_npy(&file, &ndarray::Array1::from(tiled)).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(bin)
            .args(["replay", "--json", "--quiet", "--addr", &server.addr])
            .args(extra)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let summary: serde_json::Value =
            serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        summary["summary"]["conditions"][0].clone()
    };
    let stream = run(&[]);
    assert_eq!(
        stream["machine_id"], "press-4_de",
        "the file's stem by default: {stream}"
    );
    let changes = stream["changes"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .any(|c| c["condition"] == "FAULT" && c["fault_class"] == "outer_race_014"),
        "{stream}"
    );
    assert_eq!(stream["final"]["condition"], "FAULT");
    assert!(
        stream["final"]["summary"]
            .as_str()
            .unwrap()
            .starts_with("faulty, most likely outer_race_014")
    );
    let named = run(&["--machine-id", "press 4", "--sensor-id", "DE"]);
    assert_eq!(
        (named["machine_id"].as_str(), named["sensor_id"].as_str()),
        (Some("press 4"), Some("DE"))
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_serve_flag_has_an_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_drsn-serve"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .collect();
    assert!(flags.len() >= 15, "{help}");
    for flag in flags.iter().filter(|f| !f.starts_with("help")) {
        let name = flag.split_whitespace().next().unwrap();
        let block = help.split(&format!("--{name}")).nth(1).unwrap();
        let block = block.split("\n      --").next().unwrap();
        assert!(
            block.contains("[env: "),
            "--{name} has no environment variable:\n{block}"
        );
    }
}

/// Tokens set but empty (a stray comma, an empty Secret value) refuse to start, as an empty token file does: an
/// operator who set tokens meant to require them, and must not get a server that requires none.
#[test]
fn tokens_that_are_set_but_empty_refuse_to_start() {
    let serve = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drsn-serve"));
        cmd.args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0", "--model"])
        .arg(common::model_card())
        .env_remove("DRSN_AUTH_TOKENS");
        if let Some(v) = env {
            cmd.env("DRSN_AUTH_TOKENS", v);
        }
        if let Some(v) = flag {
            cmd.args(["--auth-tokens", v]);
        }
        // Each of these fails before ONNX Runtime is loaded; a server that started would run until killed.
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                return (status.success(), err);
            }
            if started.elapsed() > std::time::Duration::from_secs(20) {
                child.kill().unwrap();
                return (true, "still running: it started".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    for (env, flag) in [
        (Some(","), None),
        (Some(""), None),
        (Some(" , "), None),
        (None, Some(",")),
    ] {
        let (ok, err) = serve(env, flag);
        assert!(!ok, "env {env:?} flag {flag:?} started");
        assert!(
            err.contains("holds no token"),
            "env {env:?} flag {flag:?}: {err}"
        );
    }
}

#[test]
fn a_16_bit_wav_is_replayed_as_its_codes_and_the_json_log_says_whose_stream_it_was() {
    let bin = env!("CARGO_BIN_EXE_drsn-serve");
    let server = common::ServerProcess::spawn(&[]);
    let mat = format!(
        "{}/models/training/tests/fixtures/cwru_mini/0HP/12k_Drive_End_OR014@6_0_197.mat",
        common::ROOT
    );
    let samples = drsn_serve::client::recording::read_recording(
        std::path::Path::new(&mat),
        &Default::default(),
    )
    .unwrap()
    .samples;
    // As a 16-bit DAQ would have recorded it: codes with headroom.
    let peak = samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    let dir = std::env::temp_dir().join(format!("drsn-wav16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("pump.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 12_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for x in &samples {
        w.write_sample((x / peak * 16_000.0).round() as i16)
            .unwrap();
    }
    w.finalize().unwrap();

    let out = Command::new(bin)
        .args([
            "replay",
            "--json",
            "--machine-id",
            "pump-7",
            "--addr",
            &server.addr,
        ])
        .arg(&wav)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines = json_lines(&out);
    let (summary, windows) = lines.split_last().unwrap();
    assert_eq!(
        windows.len(),
        common::windows_in(samples.len(), common::window(), common::hop())
    );
    for w in windows {
        assert_eq!(w["label"], "outer_race_014", "{w}");
    }
    assert_eq!(summary["summary"]["failed_streams"], 0);

    // The stream's log line carries the stream's span: machine, sensor, peer and model version.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let opened = loop {
        let found = server
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("stream opened") && l.contains("pump-7"))
            .cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 'stream opened' line for pump-7: {:?}",
            server.log.lock().unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let v: serde_json::Value = serde_json::from_str(&opened).unwrap();
    let span = &v["span"];
    assert_eq!(span["name"], "stream", "{v}");
    assert!(span["machine"].as_str().unwrap().contains("pump-7"), "{v}");
    assert!(span["sensor"].as_str().unwrap().contains("pump.wav"), "{v}");
    assert!(span["peer"].as_str().unwrap().contains("127.0.0.1"), "{v}");
    assert_eq!(span["model_version"], common::model_version(), "{v}");
}
