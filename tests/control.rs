//! The control endpoint on loopback: /status carries the fields DESIGN.md
//! promises, /metrics is Prometheus text, unknown paths are 404.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vipd::control::{serve, ConfigState, Sources};
use vipd::vrrp::stats::{Stats, StatsList};

const CONFIG: &str = r#"
[[vrrp]]
name = "web"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = "100ms"
virtual_ips = ["192.0.2.10/24"]
"#;

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("http answer");
    (head.to_string(), body.to_string())
}

#[tokio::test]
async fn status_metrics_and_not_found() {
    let config = vipd::config::parse(CONFIG, Path::new("t.toml")).expect("valid");
    let c = &config.vrrp[0];
    let vips = c.virtual_ips.iter().map(|v| v.to_string()).collect();
    let stats = Arc::new(Stats::new(&c.spec, &c.interface, vips, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sources = Sources {
        vrrp: Arc::new(StatsList::new(vec![stats])),
        http: Default::default(),
        groups: Vec::new(),
        announce: Vec::new(),
        config: ConfigState::new(Path::new("t.toml")),
    };
    let server = tokio::spawn(serve(listener, sources));

    let (head, body) = get(addr, "/status").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let i = &v["vrrp"][0];
    for key in ["name", "state", "priority", "effective_priority", "vrid", "master_ip", "transitions", "since"] {
        assert!(i.get(key).is_some(), "missing {key} in {body}");
    }
    assert_eq!(i["state"], "init");
    assert_eq!(i["vrid"], 51);
    assert_eq!(i["rx"]["dropped"]["checksum"], 0);
    assert_eq!(i["recent_transitions"], serde_json::json!([]));
    assert!(v["now"].as_f64().is_some_and(|t| t >= i["since"].as_f64().unwrap_or(f64::MAX)), "{body}");
    assert!(v["http"].is_array());

    let (head, body) = get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("vipd_vrrp_state{instance=\"web\",vrid=\"51\",state=\"init\"} 1"), "{body}");
    assert!(body.contains("vipd_vrrp_packets_dropped_total{instance=\"web\",vrid=\"51\",reason=\"ttl\"} 0"));

    // The page carries the document of now for its first paint, and its
    // script fetches /status after that.
    let (head, body) = get(addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{head}");
    assert!(lower.contains("content-security-policy: default-src 'none'"), "{head}");
    let start = r#"<script id="initial" type="application/json">"#;
    let inline = body.split_once(start).and_then(|(_, rest)| rest.split_once("</script>")).expect("inline status").0;
    let v: serde_json::Value = serde_json::from_str(inline).expect("inline status is JSON");
    assert_eq!(v["vrrp"][0]["name"], "web");
    assert_eq!(v["vrrp"][0]["state"], "init");
    assert!(v["now"].as_f64().is_some_and(|t| t > 1.6e9), "{inline}");
    assert!(body.contains(r#"fetch("/status""#), "the page refreshes itself from /status");
    let (head, _) = get(addr, "/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    server.abort();
}
