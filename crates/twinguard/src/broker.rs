//! The embedded MQTT broker (rumqttd), on loopback, with a password per account and topic
//! permissions per account (enforced by [`crate::mqtt_acl`] in front of rumqttd, which has
//! none of its own). Used by default; `--broker HOST:PORT` points twinguard at an external
//! broker instead.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::mqtt_acl::{Perms, Refusals};

/// A free loopback port (bound and released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// The topic permissions of the embedded broker's accounts: each device publishes only its
/// asset's telemetry (or its own Sparkplug node's messages) and reads only its commands;
/// the edge gateway, which fronts every device of the line, has the union of theirs;
/// twinguard reads telemetry and writes commands; the intruder account of the attack demos
/// may publish and read telemetry (a compromised monitoring account).
pub fn acl(plant: &plant_model::Plant, sparkplug_group: Option<&str>) -> HashMap<String, Perms> {
    let mut acl: HashMap<String, Perms> = HashMap::new();
    let mut gateway = Perms::default();
    for a in &plant.assets {
        let d = &a.device;
        let mut publish = vec![plant.telemetry_topic(&a.id)];
        let mut subscribe = vec![plant.command_topic(&a.id)];
        for kind in ["NBIRTH", "NDATA", "NDEATH"] {
            publish.push(format!("spBv1.0/+/{kind}/{d}"));
        }
        for kind in ["DBIRTH", "DDATA", "DDEATH"] {
            publish.push(format!("spBv1.0/+/{kind}/{d}/+"));
        }
        subscribe.push(format!("spBv1.0/+/NCMD/{d}"));
        gateway.publish.extend(publish.iter().cloned());
        gateway.subscribe.extend(subscribe.iter().cloned());
        acl.insert(d.clone(), Perms { publish, subscribe });
    }
    // The gateway subscribes with wildcards over its devices' command topics.
    gateway
        .subscribe
        .push(format!("twinguard/{}/+/cmd", plant.plant.id));
    if let Some(g) = sparkplug_group {
        gateway.subscribe.push(format!("spBv1.0/{g}/NCMD/+"));
    }
    acl.insert("edge-gateway".to_string(), gateway);
    let telemetry = format!("twinguard/{}/+/telemetry", plant.plant.id);
    let mut subscribe = vec![telemetry.clone()];
    if let Some(g) = sparkplug_group {
        subscribe.push(format!("spBv1.0/{g}/#"));
    }
    acl.insert(
        "twinguard".to_string(),
        Perms {
            publish: vec![
                format!("twinguard/{}/+/cmd", plant.plant.id),
                "spBv1.0/+/NCMD/+".to_string(),
            ],
            subscribe,
        },
    );
    acl.insert(
        "intruder".to_string(),
        Perms {
            publish: vec![telemetry.clone()],
            subscribe: vec![telemetry],
        },
    );
    acl
}

/// Starts the broker on its own threads on internal loopback ports, and the permission
/// checking proxy in front of it on 127.0.0.1:`port` for MQTT 3.1.1 and 127.0.0.1:`port_v5`
/// for MQTT 5. Returns the list of refusals (account: what), for the report.
pub fn start(
    port: u16,
    port_v5: u16,
    users: HashMap<String, String>,
    acl: HashMap<String, Perms>,
) -> Result<Refusals> {
    let inner = free_port()?;
    let inner_v5 = free_port()?;
    let refusals = Refusals::default();
    let acl = std::sync::Arc::new(acl);
    for (public, private, v5) in [(port, inner, false), (port_v5, inner_v5, true)] {
        let listener = std::net::TcpListener::bind(("127.0.0.1", public))
            .with_context(|| format!("cannot listen on 127.0.0.1:{public}"))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(crate::mqtt_acl::serve(
            listener,
            ([127, 0, 0, 1], private).into(),
            v5,
            acl.clone(),
            refusals.clone(),
        ));
    }
    start_rumqttd(inner, inner_v5, users)?;
    Ok(refusals)
}

fn start_rumqttd(port: u16, port_v5: u16, users: HashMap<String, String>) -> Result<()> {
    let listener = |name: &str, port: u16| {
        let listen: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut m = HashMap::new();
        m.insert(
            "1".to_string(),
            ServerSettings {
                name: name.into(),
                listen,
                tls: None,
                next_connection_delay_ms: 1,
                connections: ConnectionSettings {
                    connection_timeout_ms: 60_000,
                    max_payload_size: frames::MAX_ENVELOPE_BYTES + 1024,
                    max_inflight_count: 500,
                    auth: Some(users.clone()),
                    external_auth: None,
                    dynamic_filters: true,
                },
            },
        );
        m
    };
    let v4 = listener("twinguard-v4", port);
    let v5 = listener("twinguard-v5", port_v5);
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 500,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: Some(v5),
        ..Default::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .context("cannot start the embedded MQTT broker thread")?;
    Ok(())
}

/// Waits until something accepts TCP connections on the port.
pub async fn wait_ready(port: u16) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    anyhow::bail!("the embedded MQTT broker did not start listening on 127.0.0.1:{port}")
}
