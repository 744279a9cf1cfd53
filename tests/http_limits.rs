//! The HTTP listeners (KServe V2 REST, /metrics and probes) seen by a hostile client: a request is refused from its
//! headers before its body is read (no token, too large, no request memory left), `Expect: 100-continue` is never
//! answered `100` for a body that could not be taken, a 32 MiB JSON body costs about its size to decode, requests
//! trickled in are closed at the read timeout, and a metrics listener full of idle connections still answers its
//! probes. Tests that read process-wide metrics run one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "drsn-cw-cwru";
const TOKEN: &str = "a-token-of-at-least-16-characters";

/// A JSON infer request for `windows` windows, each value printed with `digits` decimals.
fn infer_json(windows: usize, digits: usize) -> String {
    let w = common::window();
    let mut data = String::with_capacity(windows * w * (digits + 4));
    for i in 0..windows * w {
        if i > 0 {
            data.push(',');
        }
        let x = (i as f64 * 0.37).sin() * 0.5;
        data.push_str(&format!("{x:.digits$}"));
    }
    format!(
        r#"{{"id": "r1", "inputs": [{{"name": "vibration", "datatype": "FP32", "shape": [{windows}, 1, {w}], "data": [{data}]}}], "outputs": [{{"name": "label"}}]}}"#
    )
}

fn post_head(content_length: usize, extra: &str) -> String {
    format!(
        "POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n{extra}\r\n"
    )
}

/// Reads until the end of a response head (or of the connection) within `limit`; the head, or what came.
async fn read_head(s: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends a whole request (`Connection: close`) and reads the whole response: (head, body).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got))
        .await
        .expect("a response within 60 s")
        .unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_owned(), body.to_owned())
}

/// A one-window infer that must succeed.
async fn infer_ok(addr: SocketAddr, token: Option<&str>) {
    let body = infer_json(1, 4);
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut request = post_head(body.len(), &format!("{auth}Connection: close\r\n")).into_bytes();
    request.extend_from_slice(body.as_bytes());
    let (head, body) = exchange(addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    assert!(body.contains("\"label\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_token_is_refused_before_its_body_is_read() {
    let running = common::start(&["--auth-tokens", TOKEN]).await;
    // 30 MB announced, not one byte of it sent: the answer must not wait for it.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(30_000_000, "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "no token, 30 MB announced and unsent: want 401 at once, got {head:?}"
    );
    // With the token but another model's name: 404, also from the headers alone.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    let wrong = post_head(30_000_000, &format!("Authorization: Bearer {TOKEN}\r\n"))
        .replace(MODEL, "another-model");
    s.write_all(wrong.as_bytes()).await.unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head:?}");
    // And the token still lets a real request through.
    infer_ok(running.http_addr, Some(TOKEN)).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_with_an_oversize_body_gets_413_never_100() {
    let running = common::start(&[]).await;
    // The body limit is 32 MiB and 64 KiB (256 windows of 8192 values, 16 bytes each); 40 MB is over it.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(40_000_000, "Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "Expect: 100-continue with 40 MB: want 413 at once, got {head:?}"
    );
    // A body that fits is still invited.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(1000, "Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_memory_is_reserved_from_the_declared_length_before_the_body() {
    let _serial = common::serial().await;
    // 1,000,000 bytes of request memory; a request reserves three times its length.
    let running = common::start(&["--max-request-memory", "1000000"]).await;
    let mut held = TcpStream::connect(running.http_addr).await.unwrap();
    held.write_all(post_head(200_000, "").as_bytes())
        .await
        .unwrap();
    held.write_all(b"{\"inputs\": [").await.unwrap();
    let mut reserved = None;
    for _ in 0..50 {
        reserved = common::metric(&common::scrape(&running).await, "drsn_request_memory_bytes");
        if reserved == Some(600_000.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reserved,
        Some(600_000.0),
        "a 200,000-byte request holds 600,000 bytes while its body arrives"
    );
    // Another 600,000 does not fit now: 429 at once, with the reason.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(200_000, "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head:?}");
    let mut rest = String::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_string(&mut rest)).await;
    let answer = head + &rest;
    assert!(answer.contains("request memory"), "{answer}");
    // 400,000 bytes (1,200,000 reserved) could never fit: 413.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(400_000, "").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(3)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
    // The client that held the memory goes away: it is given back.
    drop(held);
    let mut back = None;
    for _ in 0..50 {
        back = common::metric(&common::scrape(&running).await, "drsn_request_memory_bytes");
        if back == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, Some(0.0));
    infer_ok(running.http_addr, None).await;
    running.stop().await;
}

/// Sends `request` to the server process and measures its peak RSS growth meanwhile: (response head, MiB).
fn peak_growth(server: &common::ServerProcess, request: &[u8]) -> (String, f64) {
    let pid = server.child.id();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = common::proc_status_kib(pid, "VmRSS:");
    // Reset the peak, so that VmHWM says what this request cost.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
    let (head, response) = rt.block_on(exchange(server.http, request));
    let peak = common::proc_status_kib(pid, "VmHWM:");
    let growth = peak.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "{:.1} MiB body: RSS {:.0} MiB before, peak {:.0} MiB (+{growth:.0} MiB): {} {}",
        request.len() as f64 / (1 << 20) as f64,
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        head.lines().next().unwrap_or(""),
        &response[..response.len().min(200)]
    );
    (head, growth)
}

#[test]
fn a_32_mib_json_body_costs_about_its_size_to_decode() {
    let server = common::ServerProcess::spawn(&[]);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(infer_ok(server.http, None));
    let limit = (32 << 20) + (64 << 10);
    // 256 windows of 8192 values with 12 decimals: ~16 bytes a value, just under the 32 MiB + 64 KiB limit.
    let body = infer_json(256, 12);
    assert!(
        body.len() > 30 << 20 && body.len() < limit,
        "{} bytes",
        body.len()
    );
    let mut request = post_head(body.len(), "Connection: close\r\n").into_bytes();
    request.extend_from_slice(body.as_bytes());
    drop(body);
    let (head, growth) = peak_growth(&server, &request);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        growth < 200.0,
        "a 31 MiB JSON infer body grew the server's RSS by {growth:.0} MiB; the bound is +200 MiB"
    );
    // The same size in two-byte values (`0,1,0,...`): 16 million of them, eight times what a request may hold. A
    // `serde_json::Value` tree of them would take over 500 MiB.
    let prefix = r#"{"inputs": [{"name": "vibration", "datatype": "FP32", "shape": [256, 1, 8192], "data": ["#;
    let n = (limit - prefix.len() - 8) / 2;
    let mut body = String::with_capacity(limit);
    body.push_str(prefix);
    for i in 0..n {
        body.push_str(if i == 0 {
            "0"
        } else if i % 2 == 0 {
            ",0"
        } else {
            ",1"
        });
    }
    body.push_str("]}]}");
    let mut request = post_head(body.len(), "Connection: close\r\n").into_bytes();
    request.extend_from_slice(body.as_bytes());
    drop(body);
    let (head, growth) = peak_growth(&server, &request);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        growth < 200.0,
        "a 32 MiB JSON body of 16 million short values grew the server's RSS by {growth:.0} MiB; the bound is \
         +200 MiB"
    );
}

/// Sends `bytes` one at a time every `every`, until the server closes or all are sent; returns when it stopped.
async fn trickle(s: &mut TcpStream, bytes: &[u8], every: Duration) -> Instant {
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(every).await;
    }
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_trickled_in_are_closed_at_the_read_timeout() {
    let _serial = common::serial().await;
    let running = common::start(&[
        "--request-read-timeout",
        "1s",
        "--connection-idle-timeout",
        "15s",
    ])
    .await;
    let ms200 = Duration::from_millis(200);
    // Headers a byte every 200 ms, to the REST and the metrics listener: closed at the 1 s timeout.
    let mut handles = Vec::new();
    for addr in [running.http_addr, running.metrics_addr] {
        handles.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let started = Instant::now();
            let head = post_head(100, "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            let (mut r, mut w) = s.split();
            let mut buf = [0u8; 256];
            tokio::select! {
                _ = trickle_half(&mut w, head.as_bytes(), ms200) => panic!("all headers were taken"),
                _ = async { while !matches!(r.read(&mut buf).await, Ok(0) | Err(_)) {} } => {}
            }
            started.elapsed()
        }));
    }
    // Meanwhile a legitimate request goes through.
    infer_ok(running.http_addr, None).await;
    for h in handles {
        let lived = h.await.unwrap();
        assert!(
            lived < Duration::from_secs(3),
            "a connection trickling its headers lived {lived:?}; the read timeout is 1 s"
        );
    }
    // Headers at once, the body a byte every 200 ms: 408, then closed.
    let mut s = TcpStream::connect(running.http_addr).await.unwrap();
    s.write_all(post_head(100, "").as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut r, mut w) = s.split();
    let body = [b' '; 100];
    let head = tokio::select! {
        _ = trickle_half(&mut w, &body, ms200) => String::from("the whole body was taken"),
        head = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        } => head,
    };
    let lived = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 408"), "{head:?}");
    assert!(
        lived < Duration::from_secs(3),
        "a connection trickling its body lived {lived:?}; the read timeout is 1 s"
    );
    let scrape = common::scrape(&running).await;
    for (listener, least) in [("http", 2.0), ("metrics", 1.0)] {
        let series =
            format!(r#"drsn_connections_closed_total{{listener="{listener}",reason="slow"}}"#);
        let n = common::metric(&scrape, &series).unwrap_or(0.0);
        assert!(n >= least, "{series} = {n}");
    }
    running.stop().await;
}

/// [`trickle`] on the write half of a split stream.
async fn trickle_half(w: &mut tokio::net::tcp::WriteHalf<'_>, bytes: &[u8], every: Duration) {
    for b in bytes {
        if w.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_metrics_listener_still_answers_its_probes() {
    let _serial = common::serial().await;
    let running = common::start(&[]).await;
    let metrics = running.metrics_addr;
    // 80 connections (the cap is 64) that send half a request and keep trickling it.
    let mut holders = tokio::task::JoinSet::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(metrics).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        holders.spawn(async move {
            let _ = trickle(&mut s, &[b'i'; 1000], Duration::from_millis(500)).await;
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s, Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "/readyz with 80 trickling connections on the metrics listener: {head:?} after {took:?}"
    );
    let scrape = common::scrape(&running).await;
    let evicted = common::metric(
        &scrape,
        r#"drsn_connections_closed_total{listener="metrics",reason="evicted"}"#,
    )
    .unwrap_or(0.0);
    assert!(evicted >= 17.0, "evicted {evicted}");
    holders.abort_all();
    running.stop().await;
}
