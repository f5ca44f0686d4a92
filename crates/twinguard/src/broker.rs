//! The embedded MQTT broker (rumqttd), on loopback, with a password per account.
//! Used by default; `--broker HOST:PORT` points twinguard at an external broker instead.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use anyhow::{Context, Result};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// A free loopback port (bound and released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Starts the broker on its own threads, listening on 127.0.0.1:`port` for MQTT 3.1.1 and
/// on 127.0.0.1:`port_v5` for MQTT 5.
pub fn start(port: u16, port_v5: u16, users: HashMap<String, String>) -> Result<()> {
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
