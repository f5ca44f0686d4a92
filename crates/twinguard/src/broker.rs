//! The embedded MQTT broker (rumqttd), on loopback, with a password per account and topic
//! permissions per account (enforced by [`crate::mqtt_acl`] in front of rumqttd, which has
//! none of its own). Used by default; `--broker HOST:PORT` points twinguard at an external
//! broker instead.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::mqtt_acl::{Accounts, Perms, Refusals};

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

/// The embedded broker's public loopback ports, and its refusals so far.
pub struct Started {
    pub port: u16,
    pub port_v5: u16,
    pub refusals: Refusals,
}

/// Starts the broker on its own threads on internal loopback ports, and the proxy that
/// checks passwords and topic permissions in front of it on two loopback ports the system
/// picks (bound here and kept, so no other process can take them meanwhile): one for MQTT
/// 3.1.1 and one for MQTT 5. The broker itself accepts only the proxy's login, generated
/// here for this run. The refusals (account: what) are for the report.
pub fn start(users: HashMap<String, String>, acl: HashMap<String, Perms>) -> Result<Started> {
    start_on(0, 0, (free_port()?, free_port()?), users, acl)
}

/// [`start`] on the public ports given (0: any), with the broker's internal ports given.
fn start_on(
    port: u16,
    port_v5: u16,
    (inner, inner_v5): (u16, u16),
    users: HashMap<String, String>,
    acl: HashMap<String, Perms>,
) -> Result<Started> {
    let refusals = Refusals::default();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| anyhow::anyhow!("cannot generate the broker's internal password: {e}"))?;
    let upstream_login = ("twinguard-proxy".to_string(), hex::encode(secret));
    let internal_users = HashMap::from([upstream_login.clone()]);
    let accounts = std::sync::Arc::new(Accounts {
        passwords: users,
        acl,
        upstream_login,
    });
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for public in [port, port_v5] {
        let listener = std::net::TcpListener::bind(("127.0.0.1", public))
            .with_context(|| format!("cannot listen on 127.0.0.1:{public}"))?;
        bound.push(listener.local_addr()?.port());
        listeners.push(listener);
    }
    // The broker's own ports were free when picked, but another process may take one
    // before the broker binds it (and then the proxy would talk to that process's
    // broker): the broker is only used once our login is accepted on both, else it is
    // started again on other ports.
    let (mut inner, mut inner_v5) = (inner, inner_v5);
    let mut attempt = 1;
    loop {
        start_rumqttd(inner, inner_v5, internal_users.clone())?;
        let (user, password) = (&accounts.upstream_login.0, &accounts.upstream_login.1);
        let accepted = [(inner, false), (inner_v5, true)]
            .iter()
            .all(|&(p, v5)| login_accepted(p, v5, user, password));
        if accepted {
            break;
        }
        if attempt >= 5 {
            anyhow::bail!(
                "the embedded MQTT broker did not accept its own login on loopback ports {inner} and {inner_v5} after {attempt} attempts (another process on them?)"
            );
        }
        tracing::warn!(
            inner,
            inner_v5,
            "the embedded MQTT broker's ports were taken meanwhile; starting it on others"
        );
        attempt += 1;
        (inner, inner_v5) = (free_port()?, free_port()?);
    }
    for ((listener, private), v5) in listeners
        .into_iter()
        .zip([inner, inner_v5])
        .zip([false, true])
    {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::spawn(crate::mqtt_acl::serve(
            listener,
            ([127, 0, 0, 1], private).into(),
            v5,
            accounts.clone(),
            refusals.clone(),
        ));
    }
    Ok(Started {
        port: bound.first().copied().unwrap_or(port),
        port_v5: bound.get(1).copied().unwrap_or(port_v5),
        refusals,
    })
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

/// Whether the MQTT broker on loopback `port` accepts `user`'s login (MQTT 5 if `v5`,
/// else 3.1.1), waiting up to 10 s for it to start listening. The packets are written
/// and read by the MQTT client library's codec, as the proxy's are. Blocking: for
/// start-up.
fn login_accepted(port: u16, v5: bool, user: &str, password: &str) -> bool {
    use std::io::{Read, Write};
    const MAX: usize = 1024;
    let id = format!("twinguard-probe-{port}");
    let mut connect = bytes::BytesMut::new();
    let written = if v5 {
        use rumqttc::v5::mqttbytes::v5::{Connect, Login, Packet};
        let c = Connect {
            keep_alive: 10,
            client_id: id,
            clean_start: true,
            properties: None,
        };
        let login = Login {
            username: user.into(),
            password: password.into(),
        };
        Packet::Connect(c, None, Some(login))
            .write(&mut connect, None)
            .is_ok()
    } else {
        use rumqttc::mqttbytes::v4::{Connect, Login};
        let mut c = Connect::new(id);
        c.login = Some(Login::new(user, password));
        c.write(&mut connect).is_ok()
    };
    // The CONNACK's verdict; None while more bytes are needed.
    let verdict = |b: &[u8]| -> Option<bool> {
        let mut buf = bytes::BytesMut::from(b);
        if v5 {
            use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
            match Packet::read(&mut buf, Some(MAX as u32)).ok()? {
                Packet::ConnAck(a) => Some(a.code == ConnectReturnCode::Success),
                _ => Some(false),
            }
        } else {
            use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet};
            match Packet::read(&mut buf, MAX).ok()? {
                Packet::ConnAck(a) => Some(a.code == ConnectReturnCode::Success),
                _ => Some(false),
            }
        }
    };
    if !written {
        return false;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(std::time::Duration::from_millis(25));
            continue;
        };
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        if stream.write_all(&connect).is_err() {
            return false;
        }
        let (mut got, mut chunk) = (Vec::new(), [0u8; 256]);
        while got.len() < MAX {
            match stream.read(&mut chunk) {
                Ok(n) if n > 0 => got.extend(chunk.iter().take(n)),
                _ => return false,
            }
            if let Some(accepted) = verdict(&got) {
                return accepted;
            }
        }
        return false;
    }
    false
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use std::time::Duration;

    /// What the broker says to a v3.1.1 CONNECT on `port` as `user`.
    async fn connect_v4(port: u16, user: &str, password: &str) -> String {
        let mut o = rumqttc::MqttOptions::new(format!("probe-{user}-{port}"), "127.0.0.1", port);
        o.set_credentials(user, password);
        let (_client, mut ev) = rumqttc::AsyncClient::new(o, 4);
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => {
                format!("{:?}", a.code)
            }
            Ok(Ok(other)) => format!("unexpected {other:?}"),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer".into(),
        }
    }

    async fn connect_v5(port: u16, user: &str, password: &str) -> String {
        let mut o =
            rumqttc::v5::MqttOptions::new(format!("probe5-{user}-{port}"), "127.0.0.1", port);
        o.set_credentials(user, password);
        let (_client, mut ev) = rumqttc::v5::AsyncClient::new(o, 4);
        match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
            Ok(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(
                a,
            )))) => format!("{:?}", a.code),
            Ok(Ok(other)) => format!("unexpected {other:?}"),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_proxy_can_log_in_behind_it_and_it_checks_every_password() {
        let plant = plant_model::Plant::reference();
        let users = HashMap::from([("gw-tank".to_string(), "tank-secret-1".to_string())]);
        let (inner, inner_v5) = (free_port().unwrap(), free_port().unwrap());
        let Started {
            port,
            port_v5,
            refusals,
        } = start_on(0, 0, (inner, inner_v5), users, acl(&plant, None)).unwrap();
        for p in [port, port_v5, inner, inner_v5] {
            wait_ready(p).await.unwrap();
        }
        // Through the proxy, with the account's password, in either protocol version.
        assert_eq!(
            connect_v4(port, "gw-tank", "tank-secret-1").await,
            "Success"
        );
        assert_eq!(
            connect_v5(port_v5, "gw-tank", "tank-secret-1").await,
            "Success"
        );
        // A wrong password, or an unknown account, is refused by the proxy.
        let wrong = connect_v4(port, "gw-tank", "guess").await;
        assert!(wrong.contains("BadUserNamePassword"), "{wrong}");
        let wrong = connect_v5(port_v5, "nobody", "tank-secret-1").await;
        assert!(wrong.contains("BadUserNamePassword"), "{wrong}");
        // The broker's own ports do not know the device accounts: going around the proxy
        // (and its topic checks) with a device's password fails.
        let around = connect_v4(inner, "gw-tank", "tank-secret-1").await;
        assert!(around.starts_with("error"), "{around}");
        let around = connect_v5(inner_v5, "gw-tank", "tank-secret-1").await;
        assert!(around.starts_with("error"), "{around}");
        let r = refusals.lock().unwrap().clone();
        assert!(
            r.contains(&"gw-tank: wrong or missing password".to_string())
                && r.contains(&"nobody: wrong or missing password".to_string()),
            "{r:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broker_whose_ports_were_taken_meanwhile_starts_on_others() {
        let plant = plant_model::Plant::reference();
        let users = HashMap::from([("gw-tank".to_string(), "tank-secret-1".to_string())]);
        let (inner, inner_v5) = (free_port().unwrap(), free_port().unwrap());
        // Another twinguard's broker holds the ports this one picked.
        let first = start_on(0, 0, (inner, inner_v5), users.clone(), acl(&plant, None)).unwrap();
        wait_ready(first.port).await.unwrap();
        assert!(!login_accepted(inner, false, "twinguard-proxy", "not-ours"));
        assert!(!login_accepted(
            inner_v5,
            true,
            "twinguard-proxy",
            "not-ours"
        ));
        let second = start_on(0, 0, (inner, inner_v5), users, acl(&plant, None)).unwrap();
        // Its proxy talks to its own broker, which knows its login.
        assert_eq!(
            connect_v4(second.port, "gw-tank", "tank-secret-1").await,
            "Success"
        );
        assert_eq!(
            connect_v5(second.port_v5, "gw-tank", "tank-secret-1").await,
            "Success"
        );
        assert_eq!(
            connect_v4(first.port, "gw-tank", "tank-secret-1").await,
            "Success"
        );
    }
}
