//! `twinguard watch`: connect to the configured OPC UA sources of a real plant and show
//! what arrives, checked as the twin would check it (units, ranges, freshness, order,
//! status) and with its provenance (source, security, server certificate, trust).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ingest::{ChannelValue, Verifier};
use opcua_link::{UaEvent, UserIdentity};
use plant_model::Plant;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use twinguard_config::{Config, Source};

pub struct WatchArgs {
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub plant_file: Option<PathBuf>,
    pub seconds: f64,
    pub quiet: bool,
}

/// The OPC UA client settings of a configured source. Files are relative to the
/// configuration file; the trust list is the data directory's.
pub fn ua_source(
    s: &Source,
    config_path: &Path,
    data_dir: &Path,
) -> Result<opcua_link::SourceConfig> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let id = s.id.get_ref();
    let endpoint = s
        .endpoint
        .as_ref()
        .with_context(|| format!("source {id:?} has no endpoint"))?;
    let policy = match &s.security_policy {
        None => opcua_link::Policy::Basic256Sha256,
        Some(p) => opcua_link::Policy::parse(p.get_ref())
            .with_context(|| format!("source {id:?}: unknown security policy"))?,
    };
    let mode = match &s.security_mode {
        None => opcua_link::Mode::SignAndEncrypt,
        Some(m) => opcua_link::Mode::parse(m.get_ref())
            .with_context(|| format!("source {id:?}: unknown security mode"))?,
    };
    let mut cfg = opcua_link::SourceConfig::new(
        id,
        endpoint.get_ref(),
        policy,
        mode,
        data_dir.join("opcua").join("pki"),
    );
    cfg.allow_security_none = s.allow_security_none;
    cfg.identity = match (
        &s.username,
        &s.password_file,
        &s.user_cert_file,
        &s.user_key_file,
    ) {
        (Some(user), Some(pw), None, None) => {
            let path = base.join(pw.get_ref());
            let password = std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "source {id:?}: cannot read the password file {}",
                        path.display()
                    )
                })?
                .trim()
                .to_string();
            UserIdentity::UserName {
                user: user.clone(),
                password,
            }
        }
        (None, None, Some(cert), Some(key)) => UserIdentity::Certificate {
            cert: base.join(cert.get_ref()),
            key: base.join(key.get_ref()),
        },
        _ => UserIdentity::Anonymous,
    };
    if let Some(p) = s.publishing_ms {
        cfg.publishing_ms = p;
    }
    cfg.subscribe = s
        .nodes
        .iter()
        .filter_map(|n| {
            Some(opcua_link::Subscribe {
                signal: n.signal.get_ref().clone(),
                node: ua_node(n.node_ref()?),
                unit: n.unit.clone(),
                sampling_ms: n.sampling_ms,
                deadband: n.deadband,
                queue_size: n.queue_size,
            })
        })
        .collect();
    Ok(cfg)
}

/// The configured node as the OPC UA client names it.
/// Connects an OPC UA source; its values and connection events go to `tx`, tagged with
/// `index`.
pub async fn connect_tagged(
    cfg: &opcua_link::SourceConfig,
    index: usize,
    tx: mpsc::Sender<(usize, UaEvent)>,
) -> Result<opcua_link::Connection> {
    let (utx, mut urx) = mpsc::channel(cfg.queue);
    let conn = opcua_link::Connection::connect(cfg, utx).await?;
    tokio::spawn(async move {
        while let Some(e) = urx.recv().await {
            if tx.send((index, e)).await.is_err() {
                return;
            }
        }
    });
    Ok(conn)
}

/// The provenance of values from an OPC UA connection.
pub fn ua_source_info(
    id: String,
    conn: &opcua_link::Connection,
    zone: Option<String>,
) -> ingest::SourceInfo {
    ingest::SourceInfo {
        id,
        protocol: "opcua".into(),
        security: conn.security.clone(),
        peer_certificate: conn.peer_certificate.clone(),
        zone,
        allow_unsigned: false,
        authenticated: conn.authenticated,
    }
}

pub fn ua_node(n: twinguard_config::NodeSpec) -> opcua_link::NodeRef {
    match n {
        twinguard_config::NodeSpec::Id(s) => opcua_link::NodeRef::Id(s),
        twinguard_config::NodeSpec::Path(s) => opcua_link::NodeRef::Path(s),
    }
}

#[allow(
    clippy::indexing_slicing,
    reason = "serde_json::Value indexing yields Null, it never panics"
)]
pub async fn run(args: WatchArgs) -> Result<Value> {
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        bail!(
            "--seconds must be more than 0 and at most a day, got {}",
            args.seconds
        );
    }
    let config: Config = crate::demo::load_config(&Some(args.config.clone()))?;
    let plant = Arc::new(match &args.plant_file {
        None => Plant::reference(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read plant file {}", p.display()))?;
            Plant::parse(&text, &p.display().to_string())?
        }
    });
    let ua: Vec<&Source> = config
        .sources
        .iter()
        .filter(|s| s.protocol.get_ref() == "opcua")
        .collect();
    if ua.is_empty() {
        bail!(
            "{} declares no OPC UA source; `watch` connects to OPC UA sources (MQTT sources run with `demo`)",
            args.config.display()
        );
    }
    for s in &ua {
        for n in &s.nodes {
            if plant.signal(n.signal.get_ref()).is_none() {
                bail!(
                    "source {:?} maps signal {:?}, which is not in plant {}",
                    s.id.get_ref(),
                    n.signal.get_ref(),
                    plant.plant.id
                );
            }
        }
    }
    let mut verifier = Verifier::new(plant.clone(), vec![], config.ingest.clone());
    let (tx, mut rx) = mpsc::channel::<(usize, UaEvent)>(65_536);
    let mut sources = Vec::new();
    let mut conns = Vec::new();
    for (i, s) in ua.iter().enumerate() {
        let cfg = ua_source(s, &args.config, &args.data_dir)?;
        let conn = connect_tagged(&cfg, i, tx.clone()).await?;
        if !args.quiet {
            eprintln!(
                "twinguard: {} connected to {} ({}, server certificate SHA-256 {})",
                s.id.get_ref(),
                cfg.url,
                conn.security,
                conn.peer_certificate.as_deref().unwrap_or("-")
            );
        }
        sources.push(Arc::new(ua_source_info(
            s.id.get_ref().clone(),
            &conn,
            Some(config.zone_of(s)),
        )));
        conns.push(conn);
    }
    drop(tx);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut events: Vec<BTreeMap<&str, u64>> = vec![BTreeMap::new(); sources.len()];
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    let mut next_report = started + Duration::from_secs(5);
    loop {
        let e = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::time::sleep_until(deadline.into()) => None,
        };
        let Some((i, e)) = e else { break };
        let (Some(source), Some(ev)) = (sources.get(i), events.get_mut(i)) else {
            continue;
        };
        match e {
            UaEvent::Value(v) => {
                let out = verifier.check_values(
                    source,
                    vec![ChannelValue {
                        signal: v.signal,
                        channel: v.node,
                        unit: v.unit,
                        value: v.value,
                        good: v.good,
                        status: v.status,
                        t_ms: v.source_ms.or(v.server_ms),
                    }],
                    crate::demo::wall_clock_ms(),
                );
                for s in out.accepted {
                    last.insert(
                        s.signal.to_string(),
                        json!({ "value": s.value, "t_ms": s.t_ms, "provenance": s.provenance }),
                    );
                }
                for r in out.rejected {
                    tracing::info!(source = %source.id, reason = %r.reason, detail = %r.detail, "value rejected");
                }
            }
            UaEvent::Lost { reason } => {
                *ev.entry("lost").or_default() += 1;
                eprintln!(
                    "twinguard: {} lost: {reason}; data gap until it is restored",
                    source.id
                );
            }
            UaEvent::Restored { .. } => {
                *ev.entry("restored").or_default() += 1;
                eprintln!("twinguard: {} restored", source.id);
            }
        }
        if !args.quiet && Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            let c = verifier.counters();
            eprintln!(
                "[{:5.0} s] values accepted {} · rejected {}",
                started.elapsed().as_secs_f64(),
                c.samples_accepted,
                c.samples_rejected.values().sum::<u64>()
            );
        }
    }
    let dropped: u64 = conns
        .iter()
        .map(|c| c.dropped.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    for c in conns {
        c.close().await;
    }
    let c = verifier.counters();
    Ok(json!({
        "sources": sources.iter().zip(&events).map(|(s, e)| json!({
            "id": s.id, "protocol": s.protocol, "security": s.security,
            "peer_certificate": s.peer_certificate, "authenticated": s.authenticated,
            "zone": s.zone, "events": e,
        })).collect::<Vec<_>>(),
        "samples": { "accepted": c.samples_accepted, "rejected": c.samples_rejected, "dropped": dropped },
        "signals": last,
    }))
}
