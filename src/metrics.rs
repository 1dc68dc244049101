//! `/metrics`: the status and the proxy's meters in the OpenMetrics text
//! format (which Prometheus reads), written by the `prometheus-client`
//! crate from a snapshot taken at each scrape. Counters are named without
//! their `_total` suffix here: the encoder adds it.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::Status;
use crate::proxy::backends::ListenerPool;
use crate::proxy::meter::{ByClass, Latency};
use crate::vrrp::fsm::State;
use crate::vrrp::stats::Snapshot;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// One counter of a listener's meter.
type MeterField = fn(&crate::proxy::meter::ListenerMeter) -> &std::sync::atomic::AtomicU64;

/// What one scrape encodes.
#[derive(Debug)]
struct Scrape {
    status: Status,
    listeners: Vec<Arc<ListenerPool>>,
}

/// The exposition of `status` and of `listeners`' meters.
pub fn render(status: Status, listeners: Vec<Arc<ListenerPool>>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { status, listeners }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        out = format!("# the metrics could not be written: {e}\n");
    }
    out
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        // No labels: no braces (`name 1`, not `name{} 1`).
        if labels.is_empty() {
            sample(&mut m, kind, value)?;
        } else {
            sample(&mut m.encode_family(&labels)?, kind, value)?;
        }
    }
    Ok(())
}

fn sample(series: &mut MetricEncoder, kind: MetricType, value: u64) -> fmt::Result {
    match kind {
        MetricType::Counter => series.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => series.encode_gauge(&value),
    }
}

fn histogram<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, &'a Latency)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        let (sum, count, buckets) = h.read();
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn instance(s: &Snapshot) -> Labels {
    vec![("instance", escape(&s.name)), ("vrid", s.vrid.to_string())]
}

fn with(mut labels: Labels, more: &[(&'static str, String)]) -> Labels {
    labels.extend_from_slice(more);
    labels
}

fn by_class(labels: Labels, classes: &ByClass) -> impl Iterator<Item = (Labels, u64)> + '_ {
    classes.read().into_iter().map(move |(class, n)| (with(labels.clone(), &[("class", class.to_string())]), n))
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let status = &self.status;
        let gauge = MetricType::Gauge;
        let counter = MetricType::Counter;
        {
            let mut info = enc.encode_descriptor("vipd_build", "The running vipd.", None, MetricType::Info)?;
            info.encode_info(&vec![("version", env!("CARGO_PKG_VERSION"))])?;
        }
        let c = &status.config;
        let e = &mut enc;
        family(
            e,
            "vipd_config_last_reload_successful",
            gauge,
            "1 when the last reload was taken (or none was asked for), 0 when it was refused.",
            [(Vec::new(), u64::from(c.last_reload.as_ref().is_none_or(|r| r.ok)))],
        )?;
        family(
            e,
            "vipd_config_last_reload_success_timestamp_seconds",
            gauge,
            "When the running configuration was loaded.",
            [(Vec::new(), c.loaded_at as u64)],
        )?;
        family(
            e,
            "vipd_config_generation",
            gauge,
            "Configurations loaded: 1 at start, one more per reload taken.",
            [(Vec::new(), c.generation)],
        )?;
        let states = [State::Initialize, State::Backup, State::Master, State::Fault];
        family(
            e,
            "vipd_vrrp_state",
            gauge,
            "1 for the state the instance is in.",
            status.vrrp.iter().flat_map(|s| {
                states.iter().map(move |st| {
                    (with(instance(s), &[("state", st.name().to_string())]), u64::from(s.state == st.name()))
                })
            }),
        )?;
        family(
            e,
            "vipd_vrrp_effective_priority",
            gauge,
            "Priority after tracking: what the instance advertises.",
            status.vrrp.iter().map(|s| (instance(s), u64::from(s.effective_priority))),
        )?;
        family(
            e,
            "vipd_vrrp_tracker_failing",
            gauge,
            "1 while the tracker fails.",
            status.vrrp.iter().flat_map(|s| {
                s.trackers.iter().map(move |t| {
                    (with(instance(s), &[("tracker", format!("{}:{}", t.kind, escape(&t.name)))]), u64::from(t.failing))
                })
            }),
        )?;
        let announce = |a: &crate::announce::driver::AnnounceSnapshot| vec![("announce", escape(&a.name))];
        family(
            e,
            "vipd_announce_announced",
            gauge,
            "1 while the announcement's addresses are on its exported interface (the route is announced).",
            status.announce.iter().map(|a| (announce(a), u64::from(a.announced))),
        )?;
        family(
            e,
            "vipd_announce_changes",
            counter,
            "Moves between announced, withdrawn and released since start.",
            status.announce.iter().map(|a| (announce(a), a.changes)),
        )?;
        family(
            e,
            "vipd_announce_netlink_errors",
            counter,
            "Address changes of the announcement the kernel refused.",
            status.announce.iter().map(|a| (announce(a), a.netlink_errors)),
        )?;
        family(
            e,
            "vipd_announce_tracker_failing",
            gauge,
            "1 while the announcement's tracker fails.",
            status.announce.iter().flat_map(|a| {
                a.trackers.iter().map(move |t| {
                    (with(announce(a), &[("tracker", format!("{}:{}", t.kind, escape(&t.name)))]), u64::from(t.failing))
                })
            }),
        )?;
        family(
            e,
            "vipd_notify_runs",
            counter,
            "Notify hook runs by state and result.",
            status
                .vrrp
                .iter()
                .map(|s| ("instance", &s.name, &s.notify_runs))
                .chain(status.sync_groups.iter().map(|g| ("group", &g.name, &g.notify_runs)))
                .flat_map(|(kind, name, runs)| {
                    runs.iter().map(move |r| {
                        let labels = vec![
                            (kind, escape(name)),
                            ("state", r.state.to_string()),
                            ("result", r.result.to_string()),
                        ];
                        (labels, r.runs)
                    })
                }),
        )?;
        let per_instance = [
            (
                "vipd_vrrp_transitions",
                "State changes since start.",
                (|s: &Snapshot| s.transitions) as fn(&Snapshot) -> u64,
            ),
            ("vipd_vrrp_adverts_received", "Valid adverts received from other routers.", |s| s.rx.adverts),
            ("vipd_vrrp_adverts_sent", "Adverts sent.", |s| s.tx.adverts),
            ("vipd_vrrp_gratuitous_arps_sent", "Gratuitous ARP frames sent.", |s| s.tx.garps),
            ("vipd_vrrp_netlink_errors", "Failed virtual address changes.", |s| s.tx.netlink_errors),
            ("vipd_vrrp_vip_restored", "Virtual addresses found deleted under the master and put back.", |s| {
                s.tx.vips_restored
            }),
        ];
        for (name, help, value) in per_instance {
            family(e, name, counter, help, status.vrrp.iter().map(|s| (instance(s), value(s))))?;
        }
        family(
            e,
            "vipd_vrrp_packets_dropped",
            counter,
            "Received packets dropped, by reason.",
            status.vrrp.iter().flat_map(|s| {
                s.rx.dropped.iter().map(move |(reason, n)| (with(instance(s), &[("reason", reason.to_string())]), *n))
            }),
        )?;

        // HTTP: the backends' state from the status, the rest from the meters.
        let backend_labels = |listener: &str, backend: &dyn fmt::Display| {
            vec![("listener", escape(listener)), ("backend", backend.to_string())]
        };
        let backend_rows = |f: fn(&crate::proxy::backends::BackendSnapshot) -> u64| {
            status
                .http
                .iter()
                .flat_map(move |p| p.backends.iter().map(move |b| (backend_labels(&p.name, &b.address), f(b))))
        };
        family(
            e,
            "vipd_http_backend_healthy",
            gauge,
            "1 if the backend gets new requests.",
            backend_rows(|b| u64::from(b.healthy)),
        )?;
        family(
            e,
            "vipd_http_backend_in_flight",
            gauge,
            "Requests being served by the backend now.",
            backend_rows(|b| b.in_flight),
        )?;
        family(
            e,
            "vipd_http_backend_requests",
            counter,
            "Requests sent to the backend.",
            backend_rows(|b| b.requests),
        )?;
        family(
            e,
            "vipd_http_backend_failures",
            counter,
            "Connect errors, broken connections, timeouts and 5xx answers.",
            backend_rows(|b| b.failures),
        )?;
        let pools: Vec<_> = self.listeners.iter().map(|l| (Arc::clone(l), l.current())).collect();
        let backends = || {
            pools.iter().flat_map(|(l, p)| p.backends().iter().map(move |b| (backend_labels(l.name(), &b.address), b)))
        };
        family(
            e,
            "vipd_http_backend_responses",
            counter,
            "The backend's answers, by status class.",
            backends().flat_map(|(labels, b)| by_class(labels, &b.meter().responses)),
        )?;
        histogram(
            e,
            "vipd_http_backend_response_seconds",
            "From the request sent to the backend to its response head.",
            backends().map(|(labels, b)| (labels, &b.meter().response_time)),
        )?;
        family(
            e,
            "vipd_http_backend_checks",
            counter,
            "Active health checks, by result.",
            backends().flat_map(|(labels, b)| {
                let m = b.meter();
                let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                [
                    (with(labels.clone(), &[("result", "pass".to_string())]), load(&m.checks_passed)),
                    (with(labels, &[("result", "fail".to_string())]), load(&m.checks_failed)),
                ]
            }),
        )?;
        let listener = |l: &ListenerPool| vec![("listener", escape(l.name()))];
        family(
            e,
            "vipd_http_responses",
            counter,
            "Answers to clients, the proxy's own (400, 502, 503, ...) included, by status class.",
            self.listeners.iter().flat_map(|l| by_class(listener(l), &l.meter().responses)),
        )?;
        histogram(
            e,
            "vipd_http_request_duration_seconds",
            "From a request's head to the last byte of its answer (HTTP/2: to the answer's head).",
            self.listeners.iter().map(|l| (listener(l), &l.meter().request_time)),
        )?;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let per_listener: [(&str, MetricType, &str, MeterField); 5] = [
            ("vipd_http_retries", counter, "Attempts beyond a request's first.", |m| &m.retries),
            ("vipd_http_connections_accepted", counter, "Client connections accepted.", |m| &m.accepted),
            ("vipd_http_connections_open", gauge, "Client connections open now.", |m| &m.open),
            ("vipd_http_received_bytes", counter, "Request body bytes taken from clients.", |m| &m.bytes_in),
            ("vipd_http_sent_bytes", counter, "Response body bytes sent to clients.", |m| &m.bytes_out),
        ];
        for (name, kind, help, field) in per_listener {
            family(e, name, kind, help, self.listeners.iter().map(|l| (listener(l), load(field(l.meter())))))?;
        }

        // TLS listeners.
        let tls =
            || status.http.iter().filter_map(|p| p.tls.as_ref().map(|t| (vec![("listener", escape(&p.name))], t)));
        family(
            e,
            "vipd_tls_handshakes",
            counter,
            "TLS handshakes completed, full or resumed (session ticket or id).",
            tls().flat_map(|(labels, t)| {
                [
                    (with(labels.clone(), &[("kind", "full".to_string())]), t.handshakes_full),
                    (with(labels, &[("kind", "resumed".to_string())]), t.handshakes_resumed),
                ]
            }),
        )?;
        family(
            e,
            "vipd_tls_handshake_failures",
            counter,
            "TLS handshakes that failed, by reason.",
            tls().flat_map(|(labels, t)| {
                t.failures.iter().map(move |(why, n)| (with(labels.clone(), &[("reason", why.to_string())]), *n))
            }),
        )?;
        family(
            e,
            "vipd_tls_certificate_expiry_seconds",
            gauge,
            "When each name's certificate expires, seconds since the Unix epoch.",
            tls().flat_map(|(labels, t)| {
                t.certificates.iter().flat_map(move |c| {
                    let expiry = u64::try_from(c.not_after).unwrap_or(0);
                    let labels = with(labels.clone(), &[("cert", escape(&c.cert.display().to_string()))]);
                    let names = if c.names.is_empty() { vec![String::new()] } else { c.names.clone() };
                    names.into_iter().map(move |n| (with(labels.clone(), &[("name", escape(&n))]), expiry))
                })
            }),
        )?;
        Ok(())
    }
}
