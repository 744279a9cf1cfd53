//! `drsn-serve bridge mqtt`: raw-waveform topics of an MQTT broker in, per-window results and condition changes out,
//! through drsn-serve replicas over gRPC with the gateway library's exactly-once streams.
//!
//! Why a client of the replicas and not a listener inside each: every replica subscribed to the same topics would
//! diagnose every sensor once per replica, and a shared subscription would scatter one sensor's messages over
//! several replicas. One bridge (or one per topic subtree) keeps each sensor's samples in order on one stream and
//! resumes it on another replica when one goes away.

pub mod payload;
pub(crate) mod sensors;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

use crate::client::connect::ConnectArgs;
use crate::telemetry::metrics as m;
use sensors::{Feeds, Shared};

/// How long a closing bridge waits for its streams' last results.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);
/// Requests (publishes, acks) queued for the MQTT connection.
const MQTT_REQUESTS: usize = 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// The drsn-serve replica to stream to (and --fallback-addr for others).
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Another replica a stream may resume on (repeat).
    #[arg(long = "fallback-addr")]
    pub fallback_addrs: Vec<String>,
    /// The broker: mqtt://host:port, or mqtts://host:port for TLS.
    #[arg(long, env = "DRSN_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    /// The bridge's MQTT client id: its session (subscriptions and QoS 1 messages queued while it is away) at the
    /// broker. One per bridge.
    #[arg(long, env = "DRSN_MQTT_CLIENT_ID", default_value = "drsn-bridge")]
    pub mqtt_client_id: String,
    #[arg(long, env = "DRSN_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// File holding the MQTT password.
    #[arg(long, env = "DRSN_MQTT_PASSWORD_FILE", requires = "mqtt_username")]
    pub mqtt_password_file: Option<PathBuf>,
    /// CA certificate (PEM) for an mqtts:// broker.
    #[arg(long, env = "DRSN_MQTT_CA")]
    pub mqtt_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for a broker that asks for mutual TLS.
    #[arg(long, env = "DRSN_MQTT_CLIENT_CERT", requires = "mqtt_client_key")]
    pub mqtt_client_cert: Option<PathBuf>,
    #[arg(long, env = "DRSN_MQTT_CLIENT_KEY", requires = "mqtt_client_cert")]
    pub mqtt_client_key: Option<PathBuf>,
    /// Topics in: {prefix}/raw/{machine}/{sensor}; out: {prefix}/result/…, {prefix}/condition/… (retained),
    /// {prefix}/error/…, {prefix}/bridge/status (retained: online, offline).
    #[arg(long, env = "DRSN_MQTT_TOPIC_PREFIX", default_value = "drsn")]
    pub topic_prefix: String,
    /// Largest raw message taken (larger ones are refused on the sensor's error topic; beyond 8 times this, the
    /// connection itself breaks on it).
    #[arg(long, env = "DRSN_MQTT_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,
    /// Most sensors streamed at once; a new sensor beyond it is refused on its error topic.
    #[arg(long, env = "DRSN_MQTT_MAX_SENSORS", default_value_t = 10_000)]
    pub max_sensors: usize,
    /// Messages a sensor may have waiting for its stream; beyond, its messages are refused (its stream is not
    /// keeping up) and the next one starts a new stream after the gap.
    #[arg(long, env = "DRSN_MQTT_SENSOR_QUEUE", default_value_t = 64)]
    pub sensor_queue: usize,
    /// Payload bytes all sensors' queues may hold together; beyond, messages are refused as a backlog.
    #[arg(long, env = "DRSN_MQTT_MAX_QUEUED_BYTES", default_value_t = 256 << 20)]
    pub max_queued_bytes: usize,
    /// The model that diagnoses every sensor's stream (a model of the server's --model-repository); empty: the
    /// server's default model.
    #[arg(long, env = "DRSN_MQTT_MODEL", default_value = "")]
    pub model: String,
    /// Pins the model's version; empty: its serving version, taken afresh at each resume (so streams follow a
    /// rolling model update).
    #[arg(
        long,
        env = "DRSN_MQTT_MODEL_VERSION",
        default_value = "",
        requires = "model"
    )]
    pub model_version: String,
    /// A sensor silent this long has its stream finished.
    #[arg(long, env = "DRSN_MQTT_SENSOR_IDLE", value_parser = humantime::parse_duration, default_value = "10m")]
    pub sensor_idle: Duration,
    /// Prometheus /metrics of the bridge.
    #[arg(long, env = "DRSN_MQTT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Runs the bridge until SIGTERM or Ctrl-C; then takes no more messages (the broker keeps them for the session),
/// publishes the results of those taken, and disconnects.
pub async fn run(args: MqttArgs) -> anyhow::Result<i32> {
    let handle = m::install().map_err(|e| anyhow::anyhow!("cannot record metrics: {e}"))?;
    gauge!(m::BRIDGE_CONNECTED).set(0.0);
    for outcome in m::BRIDGE_OUTCOMES {
        counter!(m::BRIDGE_MESSAGES, "outcome" => *outcome).absolute(0);
    }
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
        tracing::info!(metrics_addr = %listener.local_addr()?, "bridge metrics at /metrics");
        let router = m::router(handle.clone(), None);
        tokio::spawn(async move { axum::serve(listener, router).await });
        tokio::spawn(m::upkeep(
            handle,
            tokio_util::sync::CancellationToken::new(),
        ));
    }
    let targets = args.connect.targets(&args.fallback_addrs)?;
    let status = format!("{}/bridge/status", args.topic_prefix);
    let options = mqtt_options(&args, Some(&status))?;
    let (mqtt, mut events) = AsyncClient::new(options, MQTT_REQUESTS);
    let shared = Arc::new(Shared {
        targets,
        mqtt: mqtt.clone(),
        prefix: args.topic_prefix.clone(),
        options: drsn_client::Options::default(),
        model: (args.model.clone(), args.model_version.clone()),
        idle: args.sensor_idle,
        closing: Default::default(),
    });
    let mut feeds = Feeds::new(
        shared.clone(),
        args.max_sensors,
        args.sensor_queue,
        args.max_queued_bytes,
    );
    // Each sensor's stream starts with the tail the previous bridge left, before this bridge's session delivers
    // what was queued for it.
    let mut handed_over = Vec::new();
    for (machine, sensor, raw) in read_tails(&args).await {
        tracing::info!(%machine, %sensor, from = raw.first_sample_index, "going on from the previous bridge's tail");
        if let Err(refused) = feeds.offer(&machine, &sensor, raw) {
            tracing::warn!(%machine, %sensor, "the previous bridge's tail was refused: {}", refused.as_str());
        }
        handed_over.push(payload::tail_topic(&args.topic_prefix, &machine, &sensor));
    }
    let filter = format!("{}/raw/+/+", args.topic_prefix);
    let mut backoff = drsn_client::resume::Backoff::default();
    let stop = crate::server::termination_signal();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                counter!(m::BRIDGE_CONNECTIONS).increment(1);
                gauge!(m::BRIDGE_CONNECTED).set(1.0);
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the broker; subscribing to {filter}"
                );
                // From a task: the request queue may be full of results while this loop must go on polling.
                let (mqtt, filter, status) = (mqtt.clone(), filter.clone(), status.clone());
                let taken = std::mem::take(&mut handed_over);
                tokio::spawn(async move {
                    let _ = mqtt.subscribe(filter, QoS::AtLeastOnce).await;
                    let _ = mqtt.publish(status, QoS::AtLeastOnce, true, "online").await;
                    // The tails taken: cleared, so that a later start does not go back to them.
                    for topic in taken {
                        let _ = mqtt
                            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                            .await;
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    anyhow::bail!(
                        "the broker refused the subscription to {filter}: check the account's ACL"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(message))) => {
                take(&mut feeds, &shared, &message, args.max_payload_bytes);
                // Acknowledged once taken or refused for good: a message read but not yet decided on (the bridge
                // closing, or killed) is not acknowledged, and the broker delivers it again to the session.
                let _ = mqtt.try_ack(&message);
            }
            Ok(_) => {}
            Err(err) => {
                // rumqttc dials again on the next poll; wait a jittered, growing while before it does.
                counter!(m::BRIDGE_DISCONNECTS).increment(1);
                gauge!(m::BRIDGE_CONNECTED).set(0.0);
                tracing::warn!("the broker connection is down: {err}");
                tokio::select! {
                    _ = &mut stop => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    // Still subscribed: the broker keeps what comes next for the session (a bridge that unsubscribed would have
    // nothing queued for it when it comes back). Messages read from here on are not acknowledged.
    tracing::info!("closing: no more messages taken; publishing the results of those taken");
    let closing = async {
        feeds.finish().await;
        let _ = mqtt
            .publish(status.clone(), QoS::AtLeastOnce, true, "offline")
            .await;
        let _ = mqtt.disconnect().await;
    };
    tokio::pin!(closing);
    let deadline = tokio::time::sleep(CLOSE_DEADLINE);
    tokio::pin!(deadline);
    let mut closed = false;
    let mut disconnected = false;
    loop {
        tokio::select! {
            () = &mut closing, if !closed => closed = true,
            () = &mut deadline => {
                tracing::warn!("results still unpublished after {CLOSE_DEADLINE:?}: exiting");
                return Ok(1);
            }
            event = events.poll() => match event {
                // Not gone yet: exiting with the broker's acks unread resets the connection, and the broker may
                // drop what it had not read yet (the last tails). It closes the connection once it has read the
                // DISCONNECT, and so every publish before it.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => disconnected = true,
                Ok(_) => {}
                Err(_) if disconnected => return Ok(0),
                // Down before the DISCONNECT went out: the next poll dials again and sends what is pending.
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            },
        }
    }
}

/// One message from the broker: decoded and handed to its sensor's stream, or refused on its error topic.
fn take(feeds: &mut Feeds, shared: &Shared, message: &rumqttc::Publish, max_payload: usize) {
    let Some((machine, sensor)) = payload::sensor_of(&shared.prefix, &message.topic) else {
        counter!(m::BRIDGE_MESSAGES, "outcome" => "topic").increment(1);
        tracing::warn!(topic = %message.topic, "not a raw topic ({}/raw/MACHINE/SENSOR): ignored", shared.prefix);
        return;
    };
    let decoded = if message.retain {
        // A retained raw message is an old one replayed on every subscribe, at an index long past.
        Err("retained: raw messages must be published without the retain flag".to_owned())
    } else if message.payload.len() > max_payload {
        Err(format!(
            "{} bytes: more than --max-payload-bytes ({max_payload})",
            message.payload.len()
        ))
    } else {
        payload::decode(&message.payload)
    };
    let refused = match decoded {
        Err(why) => format!("payload refused: {why}"),
        Ok(raw) => match feeds.offer(machine, sensor, raw) {
            Ok(()) => {
                counter!(m::BRIDGE_MESSAGES, "outcome" => "taken").increment(1);
                return;
            }
            Err(r) => {
                counter!(m::BRIDGE_MESSAGES, "outcome" => r.as_str()).increment(1);
                match r {
                    sensors::Refused::Backlog => "dropped: the sensor's stream is not keeping up (the server is slow or away)".to_owned(),
                    sensors::Refused::TooManySensors => "refused: the bridge streams its most sensors (--max-sensors)".to_owned(),
                }
            }
        },
    };
    if refused.starts_with("payload") {
        counter!(m::BRIDGE_MESSAGES, "outcome" => "malformed").increment(1);
    }
    tracing::warn!(%machine, %sensor, "{refused}");
    let topic = payload::error_topic(&shared.prefix, machine, sensor);
    let body = serde_json::json!({"machine_id": machine, "sensor_id": sensor, "error": refused});
    // Never waits: this loop must keep polling the broker. A full request queue loses the notice, not samples.
    let _ = shared
        .mqtt
        .try_publish(topic, QoS::AtLeastOnce, false, body.to_string());
}

/// How long a starting bridge reads the previous one's tails: until none came for [`TAIL_QUIET`], at most
/// [`TAIL_WAIT`] (a broker that cannot be reached: none, and the windows across the handover are lost).
const TAIL_QUIET: Duration = Duration::from_millis(500);
const TAIL_WAIT: Duration = Duration::from_secs(5);

/// The tails a closing bridge left (retained on `{prefix}/tail/+/+`), read with a short session of its own.
async fn read_tails(args: &MqttArgs) -> Vec<(String, String, payload::Raw)> {
    let mut tails = Vec::new();
    let Ok(mut options) = mqtt_options(args, None) else {
        return tails;
    };
    options
        .set_client_id(format!("{}-handover", args.mqtt_client_id))
        .set_clean_session(true)
        .set_manual_acks(false);
    let (client, mut events) = AsyncClient::new(options, 16);
    let filter = format!("{}/tail/+/+", args.topic_prefix);
    let give_up = tokio::time::Instant::now() + TAIL_WAIT;
    let mut quiet = give_up;
    loop {
        let event = match tokio::time::timeout_at(quiet.min(give_up), events.poll()).await {
            Err(_) => break,
            Ok(Err(err)) => {
                tracing::warn!("cannot read the previous bridge's tails: {err}");
                break;
            }
            Ok(Ok(event)) => event,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
            }
            Event::Incoming(Packet::SubAck(_)) => quiet = tokio::time::Instant::now() + TAIL_QUIET,
            Event::Incoming(Packet::Publish(p)) => {
                quiet = tokio::time::Instant::now() + TAIL_QUIET;
                let Some((machine, sensor)) = payload::ids_of(&args.topic_prefix, "tail", &p.topic)
                else {
                    continue;
                };
                if p.payload.is_empty() {
                    continue; // cleared
                }
                match payload::decode(&p.payload) {
                    Ok(raw) => tails.push((machine.to_owned(), sensor.to_owned(), raw)),
                    Err(why) => {
                        tracing::warn!(topic = %p.topic, "a tail that cannot be read: {why}")
                    }
                }
            }
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(TAIL_QUIET, async { while events.poll().await.is_ok() {} }).await;
    tails
}

fn mqtt_options(args: &MqttArgs, status: Option<&str>) -> anyhow::Result<MqttOptions> {
    let (tls, rest) = if let Some(rest) = args.mqtt_url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = args.mqtt_url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        anyhow::bail!(
            "--mqtt-url {}: give mqtt://host:port or mqtts://host:port",
            args.mqtt_url
        );
    };
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .with_context(|| format!("--mqtt-url {}: the port", args.mqtt_url))?,
        ),
        None => (rest.trim_end_matches('/'), if tls { 8883 } else { 1883 }),
    };
    let mut options = MqttOptions::new(&args.mqtt_client_id, host.trim_matches(['[', ']']), port);
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        // MQTT 3.1.1 cannot tell a broker a limit, and a packet over this one breaks the connection (and comes
        // again after it): headroom above --max-payload-bytes, which `take` refuses by name.
        .set_max_packet_size(
            args.max_payload_bytes.saturating_mul(8).max(1 << 20),
            // Results are small; a sensor's tail at hand-over is under a window of its samples.
            16 << 20,
        );
    if let Some(status) = status {
        options.set_last_will(LastWill::new(status, "offline", QoS::AtLeastOnce, true));
    }
    if let Some(user) = &args.mqtt_username {
        let password = match &args.mqtt_password_file {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the MQTT password file {}", p.display()))?
                .trim_end()
                .to_owned(),
            None => String::new(),
        };
        options.set_credentials(user, password);
    }
    if tls {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let ca = match &args.mqtt_ca {
            Some(p) => read(p)?,
            None => anyhow::bail!(
                "an mqtts:// broker needs --mqtt-ca (the CA that signed its certificate)"
            ),
        };
        let client_auth = match (&args.mqtt_client_cert, &args.mqtt_client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}
